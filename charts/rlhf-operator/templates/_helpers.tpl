{{/* Chart name, truncated to the 63 characters of a label value. */}}
{{- define "rlhf-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name, with the chart name unless the release name contains it. */}}
{{- define "rlhf-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "rlhf-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The recommended app.kubernetes.io labels. */}}
{{- define "rlhf-operator.labels" -}}
helm.sh/chart: {{ include "rlhf-operator.chart" . }}
{{ include "rlhf-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: rlhf-operator
{{- end }}

{{- define "rlhf-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rlhf-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "rlhf-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "rlhf-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* An image reference from {repository, tag, digest}; the tag defaults to the chart's appVersion. */}}
{{- define "rlhf-operator.imageRef" -}}
{{- $image := index . 0 }}
{{- $root := index . 1 }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{- define "rlhf-operator.image" -}}
{{- include "rlhf-operator.imageRef" (list .Values.image .) }}
{{- end }}

{{/* The operator's configuration file (schema: README "Operator configuration"). */}}
{{- define "rlhf-operator.config" -}}
{{- $images := dict }}
{{- range $accelerator, $image := .Values.trainerImages }}
{{- $_ := set $images $accelerator (include "rlhf-operator.imageRef" (list $image $)) }}
{{- end }}
{{- $config := dict "namespaces" (.Values.watchNamespaces | default list) "images" $images "pools" .Values.pools "prepare" .Values.prepare "resyncSeconds" .Values.resyncSeconds "maxConcurrentReconciles" .Values.maxConcurrentReconciles }}
{{- toYaml $config }}
{{- end }}

{{/*
What the operator does in a namespace it watches: exactly the calls its code makes (the cluster
tier's audit log checks that every verb granted here is used, and nothing it needs is missing).
No Secrets: the prepare Job reads the Hub token through its env valueFrom, the operator never does.
*/}}
{{- define "rlhf-operator.rules" -}}
# RLHFRuns: read and watched (Kopf), never created, changed or deleted.
- apiGroups: [rlhf.dev]
  resources: [rlhfruns]
  verbs: [get, list, watch]
- apiGroups: [rlhf.dev]
  resources: [rlhfruns/status]
  verbs: [patch]
# Children carry ownerReferences with blockOwnerDeletion, which clusters enforcing
# OwnerReferencesPermissionEnforcement (e.g. OpenShift) only allow with update on the finalizers.
- apiGroups: [rlhf.dev]
  resources: [rlhfruns/finalizers]
  verbs: [update]
# One MPIJob per training stage (patched to suspend/resume, deleted to retry, stop or expire it).
- apiGroups: [kubeflow.org]
  resources: [mpijobs]
  verbs: [get, list, watch, create, patch, delete]
# The prepare step (downloads and data caches) is a batch Job, handled like the MPIJobs.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, patch, delete]
# The run's manifest and per-stage trainer configs (collected with the run, never deleted by us).
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, create, patch]
# One NetworkPolicy per stage: only the stage's own pods reach its workers.
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, create, patch]
# Launcher pods' termination messages (stage summaries) and why a step's pods do not start.
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
# Events on RLHFRuns (transitions), and the Warning events of our jobs (why pods are not created).
- apiGroups: [""]
  resources: [events]
  verbs: [create, list]
{{- end }}
