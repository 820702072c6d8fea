{{/* Chart name, overridable with nameOverride; 63 characters at most (DNS label). */}}
{{- define "image-similarity.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: the InferenceService name. KServe appends -predictor / -transformer to it for
Deployments and Services, so it is kept to 45 characters to leave room.
*/}}
{{- define "image-similarity.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 45 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 45 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 45 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Chart name and version, for the helm.sh/chart label. */}}
{{- define "image-similarity.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "image-similarity.labels" -}}
helm.sh/chart: {{ include "image-similarity.chart" . }}
{{ include "image-similarity.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels that identify this release's objects (selectors). */}}
{{- define "image-similarity.selectorLabels" -}}
app.kubernetes.io/name: {{ include "image-similarity.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* ServiceAccount the pods run as. */}}
{{- define "image-similarity.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "image-similarity.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* A component's image reference, tag defaulting to appVersion: (dict "image" .. "root" $). */}}
{{- define "image-similarity.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) }}
{{- end }}

{{/* The weights PVC created by the chart (source pvcJob). */}}
{{- define "image-similarity.weightsClaim" -}}
{{- printf "%s-weights" (include "image-similarity.fullname" .) }}
{{- end }}

{{/* STORAGE_URI of the predictor, from weights.source. */}}
{{- define "image-similarity.storageUri" -}}
{{- $w := .Values.weights }}
{{- if eq $w.source "storageUri" }}
{{- required "weights.storageUri is required when weights.source is storageUri" $w.storageUri }}
{{- else if eq $w.source "existingClaim" }}
{{- printf "pvc://%s/%s" (required "weights.existingClaim is required when weights.source is existingClaim" $w.existingClaim) $w.subPath }}
{{- else }}
{{- printf "pvc://%s/%s" (include "image-similarity.weightsClaim" .) $w.subPath }}
{{- end }}
{{- end }}

{{/* DEVICE of the predictor: predictor.device, else cuda with a GPU and cpu without. */}}
{{- define "image-similarity.device" -}}
{{- if .Values.predictor.device }}
{{- .Values.predictor.device }}
{{- else if gt (int .Values.predictor.gpu.count) 0 }}
{{- "cuda" }}
{{- else }}
{{- "cpu" }}
{{- end }}
{{- end }}

{{/* Path of a public route under route.pathPrefix: call with (list $ "/similarity"). */}}
{{- define "image-similarity.routePath" -}}
{{- $root := index . 0 }}
{{- printf "%s%s" (trimSuffix "/" $root.Values.route.pathPrefix) (index . 1) }}
{{- end }}

{{/* The in-cluster URL of the transformer (KServe Standard mode Service, port 80). */}}
{{- define "image-similarity.transformerUrl" -}}
{{- printf "http://%s-transformer.%s.svc" (include "image-similarity.fullname" .) .Release.Namespace }}
{{- end }}

{{/*
Labels of a component's pods, for NetworkPolicy selectors: call with (list $ "predictor").
KServe (0.21, Standard mode) puts serving.kserve.io/inferenceservice: <name> and
component: predictor|transformer on the pods it creates; networkPolicy.podLabels.<component>
replaces them where a cluster labels its pods otherwise.
*/}}
{{- define "image-similarity.componentPodLabels" -}}
{{- $root := index . 0 }}
{{- $component := index . 1 }}
{{- $override := index $root.Values.networkPolicy.podLabels $component }}
{{- if $override }}
{{- toYaml $override }}
{{- else }}
serving.kserve.io/inferenceservice: {{ include "image-similarity.fullname" $root }}
component: {{ $component }}
{{- end }}
{{- end }}

{{/*
"true" when KServe's storage initializer downloads the weights into the predictor pod (an
object store or web URI); pvc:// is mounted, oci:// is pulled by the kubelet, a path is local.
*/}}
{{- define "image-similarity.storageDownloads" -}}
{{- if and (eq .Values.weights.source "storageUri") (regexMatch "^(s3|gs|https?|hf|hdfs|webhdfs)://" .Values.weights.storageUri) }}
{{- "true" }}
{{- end }}
{{- end }}

{{/* Egress to the cluster DNS (UDP and TCP 53), one NetworkPolicy egress rule. */}}
{{- define "image-similarity.dnsEgress" -}}
- to:
    {{- toYaml .Values.networkPolicy.dns.peers | nindent 4 }}
  ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
{{- end }}

{{/* Peers for "the public internet": networkPolicy.publicIPBlocks as ipBlock peers. */}}
{{- define "image-similarity.publicPeers" -}}
{{- range .Values.networkPolicy.publicIPBlocks }}
- ipBlock:
    {{- toYaml . | nindent 4 }}
{{- end }}
{{- end }}
