{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "flowstore-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart, or the release name alone when it already contains the chart name. */}}
{{- define "flowstore-operator.fullname" -}}
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

{{- define "flowstore-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "flowstore-operator.labels" -}}
helm.sh/chart: {{ include "flowstore-operator.chart" . }}
{{ include "flowstore-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: flowstore
{{- end }}

{{- define "flowstore-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "flowstore-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "flowstore-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "flowstore-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Where the operator's own endpoints listen: every interface of the Pod's network namespace,
or only the node's loopback when the Pod shares the node's network (hostNetwork). */}}
{{- define "flowstore-operator.listenAddress" -}}
{{- if .Values.hostNetwork }}127.0.0.1{{ else }}0.0.0.0{{ end }}
{{- end }}

{{/* "true" when the operator serves its health endpoint (for the liveness or readiness probe). */}}
{{- define "flowstore-operator.healthEndpoint" -}}
{{- if or .Values.probes.liveness.enabled .Values.probes.readiness.enabled }}true{{ end }}
{{- end }}

{{- define "flowstore-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) }}
{{- end }}

{{/*
The namespaced permissions: exactly the verbs the operator (kopf underneath) uses on objects in
the namespaces it serves. Granted by a ClusterRole in cluster-wide mode, and by one Role per
watched namespace in namespaced mode.
*/}}
{{- define "flowstore-operator.namespacedRules" -}}
# The operator's own resources. get: fresh reads in every reconcile (controller/kube.py);
# list/watch: kopf's watches, index and daemons, and the flow-name conflict check;
# patch: kopf adds/removes the finalizer flowstore.dev/cleanup and its progress annotations.
# No create/update/delete: users own these objects.
- apiGroups: [flowstore.dev]
  resources: [flowstorages, storedflows]
  verbs: [get, list, watch, patch]
# Status is written with merge patches to the status subresource only (controller/kube.py).
- apiGroups: [flowstore.dev]
  resources: [flowstorages/status, storedflows/status]
  verbs: [patch]
# Flow sources (spec.source.configMapRef). list/watch: kopf's watch that wakes the StoredFlows
# using a ConfigMap when it changes; get: the read of the source when building.
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, watch]
# Backend credentials (spec.*.credentialsSecretRef, signing keys, Docker files and TLS): read by
# name only. No list/watch, so the operator never holds every Secret of a namespace in memory;
# missing ones are re-checked. With secrets.policy opt-in (the default) the operator uses only
# those labelled flowstore.dev/allow=true (RBAC cannot select by label; the operator's code does).
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
# Cloud identity (spec.serviceAccountName, controller/identity.py): the named ServiceAccount is
# read by name for its annotations (role ARN, client/tenant IDs) and uid; no list/watch. Tokens
# for it are requested with TokenRequest (create serviceaccounts/token), short-lived, for the
# cloud's audience, kept in memory only. Only where the operator watches: a FlowStorage acts as
# an account of its own namespace, never another's.
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [get]
- apiGroups: [""]
  resources: [serviceaccounts/token]
  verbs: [create]
# Events on FlowStorages/StoredFlows: the operator's own (Stored, CleanupFailed, ...) and
# kopf's warnings. Both POST core/v1 Events; nothing patches or lists them.
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- if .Values.builds.enabled }}
# Builder Jobs (builds.enabled; spec.build: flows built in their own image, controller/jobs.py):
# a Job per build in the StoredFlow's namespace, read by name (a restart adopts it), listed by
# label to delete a stale one, deleted once its result is read. No update/patch: a Job is never
# changed. Without builds.enabled none of the four rules below is granted.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, create, delete]
# Each Job's ConfigMap (the builder program and the build request), made and deleted with it.
- apiGroups: [""]
  resources: [configmaps]
  verbs: [create, delete]
# The builder Pod's state (image pulls, OOM kills) and its log, which carries the result.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list]
- apiGroups: [""]
  resources: [pods/log]
  verbs: [get]
{{- end }}
{{- end }}

{{/* Cluster-scoped permissions kopf needs in either mode. */}}
{{- define "flowstore-operator.clusterRules" -}}
# kopf watches CustomResourceDefinitions to notice the flowstore.dev CRDs being installed,
# upgraded or removed while it runs (resource discovery itself uses /apis, open to everyone).
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
{{- end }}

{{/* A shard's operator (values.yaml `shards`), given (dict "root" $ "shard" NAME): its Deployment,
Lease, Service and PDB name; NAME "" is the main operator, named as before shards existed. */}}
{{- define "flowstore-operator.shardName" -}}
{{- $full := include "flowstore-operator.fullname" .root }}
{{- if .shard }}{{ printf "%s-%s" $full .shard | trunc 63 | trimSuffix "-" }}{{ else }}{{ $full }}{{ end }}
{{- end }}

{{/* The labels that select one shard's operator Pods. The main operator keeps the chart's
selector labels (a Deployment's selector cannot change on upgrade); a shard's Pods carry another
app.kubernetes.io/name, so no Deployment's selector matches another's Pods. */}}
{{- define "flowstore-operator.podSelectorLabels" -}}
{{- if .shard }}
app.kubernetes.io/name: {{ printf "%s-shard" (include "flowstore-operator.name" .root) | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
flowstore.dev/operator-shard: {{ .shard | quote }}
{{- else }}
{{- include "flowstore-operator.selectorLabels" .root }}
{{- end }}
{{- end }}
