"""`rlhf chat`, `rlhf rw-eval` and `rlhf prompt-eval`: the command-line side of :mod:`rlhf.tools`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _sampling_args(p: argparse.ArgumentParser, max_new_tokens: int = 128) -> None:
    g = p.add_argument_group("generation")
    g.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    g.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--no-repeat-ngram-size", type=int, default=0, help="forbid repeating n-grams of this size")
    g.add_argument("--repetition-penalty", type=float, default=1.0)


def _sampling(args: argparse.Namespace):
    from rlhf.generation import Sampling

    return Sampling(max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, temperature=args.temperature,
                    top_p=args.top_p, top_k=args.top_k, no_repeat_ngram_size=args.no_repeat_ngram_size,
                    repetition_penalty=args.repetition_penalty)


def add_parsers(sub) -> None:
    p = sub.add_parser("chat", help="talk to a trained actor (multi-turn 'Human: ... Assistant:')")
    p.add_argument("--model", type=Path, required=True, help="a stage's model/ directory, e.g. runs/quickstart/ppo/model")
    p.add_argument("--prompt", action="append", metavar="TEXT",
                   help="answer this question and exit (repeat for a multi-turn conversation)")
    _sampling_args(p)

    p = sub.add_parser("rw-eval", help="score answers with a reward model, or its accuracy on preference pairs")
    p.add_argument("--model", type=Path, required=True, help="the reward stage's model/ directory")
    p.add_argument("--pairs", type=Path, help="JSONL of {prompt, chosen, rejected}: accuracy and mean scores")
    p.add_argument("--prompt", help="a question (formatted as 'Human: ... Assistant:')")
    p.add_argument("--answer", action="append", default=[], help="an answer to --prompt to score (repeatable)")
    p.add_argument("--num-padding-at-beginning", type=int, help="default: as saved with the model")

    p = sub.add_parser("prompt-eval", help="answers of a baseline and a finetuned actor side by side")
    p.add_argument("--baseline", type=Path, required=True, help="e.g. runs/quickstart/sft/model")
    p.add_argument("--model", type=Path, required=True, help="e.g. runs/quickstart/ppo/model")
    p.add_argument("--prompts", type=Path, help="JSONL of {prompt} or a text file of questions")
    p.add_argument("--prompt", action="append", default=[], help="a question (repeatable)")
    p.add_argument("--limit", type=int, default=20, help="prompts shown/evaluated at most")
    p.add_argument("--checker", choices=["none", "synthetic"], default="none",
                   help="synthetic: also check answers with the synthetic task's program")
    p.add_argument("--json", action="store_true", help="print rows and stats as JSON")
    _sampling_args(p, max_new_tokens=64)


def cmd_chat(args: argparse.Namespace) -> int:
    from rlhf import tools

    model, tok = tools.load_actor(args.model)
    sampling = _sampling(args)
    if args.prompt:
        turns: tools.Turns = []
        for question in args.prompt:
            answer = tools.reply(model, tok, [*turns, (question, None)], sampling)
            turns.append((question, answer))
            print(f"Human: {question}\nAssistant: {answer}")
        return 0
    tools.chat(model, tok, sampling)
    return 0


def cmd_rw_eval(args: argparse.Namespace) -> int:
    from rlhf import tools
    from rlhf.data.formats import format_prompt
    from rlhf.data.synthetic import read_jsonl

    if not args.pairs and not (args.prompt and args.answer):
        raise ValueError("give --pairs FILE, or --prompt TEXT with one or more --answer TEXT")
    model, tok = tools.load_scorer(args.model, args.num_padding_at_beginning)
    if args.pairs:
        print(json.dumps(tools.rw_eval(model, tok, read_jsonl(args.pairs)), indent=2))
    if args.prompt:
        prompt = format_prompt(args.prompt)
        for answer, score in zip(args.answer, tools.score_texts(model, tok, [prompt] * len(args.answer), args.answer),
                                 strict=True):
            print(f"{score:+8.3f}  {answer}")
    return 0


def cmd_prompt_eval(args: argparse.Namespace) -> int:
    from rlhf import tools
    from rlhf.data.formats import format_prompt

    prompts = [format_prompt(q) for q in args.prompt] + (tools.read_prompts(args.prompts) if args.prompts else [])
    if not prompts:
        raise ValueError("give --prompts FILE or --prompt TEXT")
    prompts = prompts[: args.limit]
    models = {"baseline": tools.load_actor(args.baseline), "finetuned": tools.load_actor(args.model)}
    rows, stats = tools.prompt_eval(models, prompts, _sampling(args), args.checker)
    if args.json:
        print(json.dumps({"rows": rows, "stats": stats}, indent=2))
        return 0
    for row in rows:
        print(f"{row['prompt']}\n  baseline:  {row['baseline']}\n  finetuned: {row['finetuned']}\n")
    for name, values in stats.items():
        print(f"{name:10s} " + "  ".join(f"{k} {v:.3f}" for k, v in values.items()), file=sys.stdout)
    return 0


def _user_errors(command):
    """Missing files and bad arguments are the user's: reported without a traceback (exit status 2)."""

    def run(args: argparse.Namespace) -> int:
        from rlhf.cli import UserError

        try:
            return command(args)
        except (FileNotFoundError, ValueError) as e:
            raise UserError(str(e)) from None

    return run


COMMANDS = {"chat": _user_errors(cmd_chat), "rw-eval": _user_errors(cmd_rw_eval),
            "prompt-eval": _user_errors(cmd_prompt_eval)}
