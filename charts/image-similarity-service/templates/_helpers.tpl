{{/* Chart name, overridable with nameOverride; 63 characters at most (DNS label). */}}
{{- define "image-similarity.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: the InferenceService name. KServe appends -predictor / -transformer to it for
Deployments and Services and labels the pods app: isvc.<name>-transformer (a label value,
63 characters at most), so a generated name is cut to 46 characters; an explicit
fullnameOverride is never cut (image-similarity.validate rejects one that is too long).
*/}}
{{- define "image-similarity.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 46 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 46 | trimSuffix "-" }}
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

{{/*
Labels of the InferenceService: no helm.sh/chart and no app.kubernetes.io/version. KServe
copies the InferenceService's labels into both Deployments' pod templates, so a label that
changes with the chart release (not the images) would restart the GPU predictor (Recreate,
a full model reload) on every chart bump.
*/}}
{{- define "image-similarity.isvcLabels" -}}
{{ include "image-similarity.selectorLabels" . }}
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

{{/* The weights PVC created by the chart (source pvc). */}}
{{- define "image-similarity.weightsClaim" -}}
{{- printf "%s-weights" (include "image-similarity.fullname" .) }}
{{- end }}

{{/*
The PVC the predictor pod mounts itself (sources pvc and existingClaim); empty for
storageUri, where KServe's storage initializer fills /mnt/models from STORAGE_URI.
*/}}
{{- define "image-similarity.podClaim" -}}
{{- $w := .Values.weights }}
{{- if eq $w.source "existingClaim" }}
{{- required "weights.existingClaim is required when weights.source is existingClaim" $w.existingClaim }}
{{- else if eq $w.source "pvc" }}
{{- include "image-similarity.weightsClaim" . }}
{{- end }}
{{- end }}

{{/* "true" when the predictor pod's init container fills the weights PVC. */}}
{{- define "image-similarity.fetchInPod" -}}
{{- if and (include "image-similarity.podClaim" .) .Values.weights.fetch.enabled }}
{{- "true" }}
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

{{/*
The public API of the transformer (README, "API"), the only paths the Ingress or HTTPRoute
exposes: [method, path] pairs.
*/}}
{{- define "image-similarity.publicRoutes" -}}
- [POST, /similarity]
- [POST, /embed]
- [GET, /health]
- [POST, /v1/embeddings]
- [GET, /v1/models]
{{- end }}

{{/* Path of a public route under route.pathPrefix: call with (list $ "/similarity"). */}}
{{- define "image-similarity.routePath" -}}
{{- $root := index . 0 }}
{{- printf "%s%s" (trimSuffix "/" $root.Values.route.pathPrefix) (index . 1) }}
{{- end }}

{{/*
Name of the chart's Ingress or HTTPRoute: never the InferenceService name (KServe's ingress
reconciler owns and overwrites the Ingress/HTTPRoute of that name) nor <name>-predictor,
-transformer or -explainer (its per-component HTTPRoutes).
*/}}
{{- define "image-similarity.routeName" -}}
{{- printf "%s-public" (include "image-similarity.fullname" .) }}
{{- end }}

{{/*
The transformer's --predictor_host. KServe's own (<name>-predictor.<namespace>, no port) makes
the client dial port 80, which exists only on a ClusterIP Service (KServe maps the first
container port to 80) and not where the Service is headless (serviceClusterIPNone). The
predictor's gRPC port is its second container port, which KServe exposes as itself (8081),
so <name>-predictor.<namespace>:8081 works for both kinds of Service. With
transformer.predictorLbPolicy round_robin: the chart's headless Service through gRPC's DNS
resolver, one subchannel per ready predictor pod.
*/}}
{{- define "image-similarity.predictorHost" -}}
{{- $name := include "image-similarity.fullname" . }}
{{- if eq .Values.transformer.predictorLbPolicy "round_robin" }}
{{- printf "dns:///%s-predictor-headless.%s:8081" $name .Release.Namespace }}
{{- else }}
{{- printf "%s-predictor.%s:8081" $name .Release.Namespace }}
{{- end }}
{{- end }}

{{/*
"true" when the predictor pod needs the node's metadata endpoint for cloud workload identity
(networkPolicy.predictor.workloadIdentity: auto is on for gs:// and s3:// storageUri).
*/}}
{{- define "image-similarity.metadataEgress" -}}
{{- $wi := toString .Values.networkPolicy.predictor.workloadIdentity.enabled }}
{{- if eq $wi "true" }}
{{- "true" }}
{{- else if and (eq $wi "auto") (eq .Values.weights.source "storageUri") (regexMatch "^(gs|s3)://" .Values.weights.storageUri) }}
{{- "true" }}
{{- end }}
{{- end }}

{{/*
"true" when predictor pods may run side by side on the ReadWriteOnce weights PVC the chart
creates: more than one replica (or an autoscaler), or a rollout that starts the new pod
before the old one stops. Every such pod must run on the node holding the volume.
*/}}
{{- define "image-similarity.rwoScaleOut" -}}
{{- $p := .Values.predictor }}
{{- $strategy := default "" (default (dict) $p.deploymentStrategy).type }}
{{- if and (eq .Values.weights.source "pvc") (has "ReadWriteOnce" .Values.weights.pvc.accessModes) (or (gt (int $p.maxReplicas) 1) (ne $strategy "Recreate")) }}
{{- "true" }}
{{- end }}
{{- end }}

{{/*
Affinity of the predictor pods: predictor.affinity (through tpl), plus, when replicas share
the chart's ReadWriteOnce PVC (image-similarity.rwoScaleOut) and predictor.affinity has no
podAffinity of its own, a required podAffinity on kubernetes.io/hostname to the other
predictor pods (as values-cpu.yaml sets explicitly): without it an extra replica or a surge
pod scheduled on another node hangs in Multi-Attach. The first pod matches its own
selector, so it schedules anywhere.
*/}}
{{- define "image-similarity.predictorAffinity" -}}
{{- $aff := dict }}
{{- with .Values.predictor.affinity }}
{{- $aff = fromYaml (tpl (toYaml .) $) }}
{{- end }}
{{- if and (include "image-similarity.rwoScaleOut" .) (not (hasKey $aff "podAffinity")) }}
{{- $sel := fromYaml (include "image-similarity.componentPodLabels" (list $ "predictor")) }}
{{- $term := dict "topologyKey" "kubernetes.io/hostname" "labelSelector" (dict "matchLabels" $sel) }}
{{- $_ := set $aff "podAffinity" (dict "requiredDuringSchedulingIgnoredDuringExecution" (list $term)) }}
{{- end }}
{{- if $aff }}
{{- toYaml $aff }}
{{- end }}
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
"true" when something in the predictor pod downloads the weights: the init container filling
the PVC, or KServe's storage initializer for an object store or web URI (pvc:// is mounted,
oci:// is pulled by the kubelet, a path is local).
*/}}
{{- define "image-similarity.storageDownloads" -}}
{{- if include "image-similarity.fetchInPod" . }}
{{- "true" }}
{{- else if and (eq .Values.weights.source "storageUri") (regexMatch "^(s3|gs|https?|hf|hdfs|webhdfs)://" .Values.weights.storageUri) }}
{{- "true" }}
{{- end }}
{{- end }}

{{/*
KServe's autoscaler class for a component (annotation serving.kserve.io/autoscalerClass):
call with the component's values. auto: none when minReplicas == maxReplicas (KServe 0.21
creates an HPA for every component whose class is hpa, the default, even when min == max),
else hpa; keda: external (the chart's ScaledObject owns the replicas; KServe creates no HPA).
*/}}
{{- define "image-similarity.autoscalerClass" -}}
{{- $class := .autoscaling.class }}
{{- if eq $class "auto" }}
{{- if eq (int .minReplicas) (int .maxReplicas) }}none{{ else }}hpa{{ end }}
{{- else if eq $class "keda" }}
{{- "external" }}
{{- else }}
{{- $class }}
{{- end }}
{{- end }}

{{/*
Render-time checks of what KServe 0.21 would refuse later, with a message that says what to
change (the JSON schema cannot compare values or measure derived names).
*/}}
{{- define "image-similarity.validate" -}}
{{- $name := include "image-similarity.fullname" . }}
{{- $ns := .Release.Namespace }}
{{- /* KServe's InferenceService name rule (inference_service_validation.go): a DNS-1035
label. Helm allows release names that start with a digit or contain dots. */}}
{{- if not (regexMatch "^[a-z]([-a-z0-9]*[a-z0-9])?$" $name) }}
{{- fail (printf "KServe would refuse the InferenceService name %q (from the release name %q): it must start with a lower-case letter and hold only lower-case letters, digits and '-' (no dots), ending in a letter or digit. Pick another release name or set fullnameOverride" $name .Release.Name) }}
{{- end }}
{{- range $component := list "predictor" "transformer" }}
{{- $c := index $.Values $component }}
{{- if and (eq (include "image-similarity.autoscalerClass" $c) "hpa") (eq $c.autoscaling.metric "memory") (not $c.autoscaling.target) }}
{{- fail (printf "%s.autoscaling.metric memory needs %s.autoscaling.target (percent of the memory request): KServe adds a memory metric only with a scaleTarget and would otherwise create an HPA on CPU at 80%%" $component $component) }}
{{- end }}
{{- if lt (int $c.maxReplicas) (int $c.minReplicas) }}
{{- fail (printf "%s.maxReplicas must be >= %s.minReplicas" $component $component) }}
{{- end }}
{{- if and (eq $c.autoscaling.class "none") (ne (int $c.minReplicas) (int $c.maxReplicas)) }}
{{- fail (printf "%s.autoscaling.class none keeps %s at minReplicas: set maxReplicas equal to minReplicas (%d), or pick hpa or keda" $component $component (int $c.minReplicas)) }}
{{- end }}
{{- end }}
{{- /* The predictor's gRPC limit must hold the largest allowed request (predictor/settings.py
grpc_message_limit: two images a pair or the images of one /embed, 3x224x224 bytes each, plus
4 MiB); explicit --grpc_max_* flags replace the limit the predictor would compute itself. */}}
{{- $s := .Values.settings }}
{{- $images := max (mul 2 (int $s.maxPairsPerRequest)) (int $s.maxImagesPerRequest) }}
{{- $needed := add (mul $images 150528) 4194304 }}
{{- if lt (int64 .Values.predictor.grpcMaxMessageBytes) (int64 $needed) }}
{{- fail (printf "predictor.grpcMaxMessageBytes (%d) is too small for the largest allowed request: %d images (settings.maxPairsPerRequest %d x 2, settings.maxImagesPerRequest %d) need %d bytes; raise it to at least %d" (int64 .Values.predictor.grpcMaxMessageBytes) $images (int $s.maxPairsPerRequest) (int $s.maxImagesPerRequest) $needed $needed) }}
{{- end }}
{{- /* KServe labels the pods app: isvc.<name>-transformer, a label value of 63 at most. */}}
{{- $app := printf "isvc.%s-transformer" $name }}
{{- if gt (len $app) 63 }}
{{- fail (printf "InferenceService name %q is %d characters; KServe labels its pods app: %s (%d characters, a label value allows 63): set fullnameOverride to 46 characters or fewer" $name (len $name) $app (len $app)) }}
{{- end }}
{{- if .Values.kserve.checkHostNames }}
{{- $host := printf "%s-transformer-%s" $name $ns }}
{{- if gt (len $host) 63 }}
{{- fail (printf "KServe would refuse this InferenceService: its host name label %q is %d characters, a DNS label allows 63 (KServe's default domainTemplate <name>-<component>-<namespace>). Shorten the name with fullnameOverride (at most %d characters in namespace %q, now %q) or use a shorter namespace; set kserve.checkHostNames=false only if your domainTemplate has no namespace" $host (len $host) (sub 63 (add 13 (len $ns))) $ns $name) }}
{{- end }}
{{- end }}
{{- end }}

{{/* Egress to the cluster DNS (UDP and TCP on networkPolicy.dns.ports), one NetworkPolicy
egress rule. A policy matches the DNS pod's own port, after the Service's translation. */}}
{{- define "image-similarity.dnsEgress" -}}
- to:
    {{- toYaml .Values.networkPolicy.dns.peers | nindent 4 }}
  ports:
    {{- range (.Values.networkPolicy.dns.ports | default (list 53 5353)) }}
    - port: {{ . }}
      protocol: UDP
    - port: {{ . }}
      protocol: TCP
    {{- end }}
{{- end }}

{{/* Peers for "the public internet": networkPolicy.publicIPBlocks as ipBlock peers. */}}
{{- define "image-similarity.publicPeers" -}}
{{- range .Values.networkPolicy.publicIPBlocks }}
- ipBlock:
    {{- toYaml . | nindent 4 }}
{{- end }}
{{- end }}

{{/*
Replica and rollout fields of a component spec (KServe ComponentExtensionSpec): call with
the component's values. scaleMetric/scaleTarget only for an HPA; KServe ignores them for
the other classes.
*/}}
{{- define "image-similarity.componentScaling" -}}
minReplicas: {{ .minReplicas }}
maxReplicas: {{ .maxReplicas }}
{{- if eq (include "image-similarity.autoscalerClass" .) "hpa" }}
scaleMetric: {{ .autoscaling.metric }}
{{- if .autoscaling.target }}
scaleTarget: {{ .autoscaling.target }}
{{- end }}
{{- end }}
{{- with .deploymentStrategy }}
deploymentStrategy:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
Annotations of a component (KServe puts them on its Deployment and pods): the pod
annotations, then the autoscaler class, which KServe reads per component.
*/}}
{{- define "image-similarity.componentAnnotations" -}}
{{- $class := dict "serving.kserve.io/autoscalerClass" (include "image-similarity.autoscalerClass" .) }}
{{- toYaml (merge $class (deepCopy (default (dict) .podAnnotations))) }}
{{- end }}

{{/*
The transformer's preStop sleep and grace period, with the chart's defaults (5 s, 40 s)
where the values lack them: `helm upgrade --reuse-values` from a release made by a chart
without these values passes none (seen on the cluster lab: "terminationGracePeriodSeconds:
Invalid value: null"). An explicit 0 switches the sleep off.
*/}}
{{- define "image-similarity.transformerPreStop" -}}
{{- if and (hasKey . "preStopSleepSeconds") (kindIs "float64" .preStopSleepSeconds) -}}
{{- int .preStopSleepSeconds -}}
{{- else if and (hasKey . "preStopSleepSeconds") (kindIs "int64" .preStopSleepSeconds) -}}
{{- .preStopSleepSeconds -}}
{{- else -}}
5
{{- end -}}
{{- end }}
{{- define "image-similarity.transformerGrace" -}}
{{- .terminationGracePeriodSeconds | default 40 | int -}}
{{- end }}
