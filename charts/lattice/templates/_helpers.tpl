{{/*
The operator's objects, as lattice.domain.deploy.operator_manifests makes them: every name,
label and the namespace are fixed (the operator's code looks for them), so that the defaults
render exactly what `lattice deploy-manifests` prints. No helm.sh/chart or release labels are
added for the same reason.
*/}}

{{- define "lattice.namespace" -}}
lattice-system
{{- end -}}

{{- define "lattice.labels" -}}
app.kubernetes.io/name: lattice-operator
app.kubernetes.io/part-of: lattice
{{- end -}}

{{- define "lattice.stateDir" -}}
/var/lib/lattice
{{- end -}}

{{/* repository[:tag][@digest]; the tag defaults to the chart's appVersion without a digest. */}}
{{- define "lattice.image" -}}
{{- $image := .Values.image -}}
{{- $tag := $image.tag | default (ternary "" .Chart.AppVersion (ne $image.digest "")) -}}
{{- $image.repository -}}
{{- with $tag }}:{{ . }}{{ end -}}
{{- with $image.digest }}@{{ . }}{{ end -}}
{{- end -}}

{{/* The arguments of `lattice operator`, in the order operator_manifests gives them. */}}
{{- define "lattice.args" -}}
{{- $args := list "operator" "--health-host" "0.0.0.0" -}}
{{- if ne (int .Values.metrics.port) 8081 -}}
{{- $args = concat $args (list "--health-port" (toString (int .Values.metrics.port))) -}}
{{- end -}}
{{- with .Values.clusterName -}}
{{- $args = concat $args (list "--cluster-name" .) -}}
{{- end -}}
{{- $args = concat $args .Values.extraArgs -}}
{{- with .Values.cell -}}
{{- if .enabled -}}
{{- $args = concat $args (list "--cell-host" .host "--bootstrap-port" (toString (int .bootstrapPort)) "--grpc-port" (toString (int .grpcPort))) -}}
{{- if .proxyPort -}}
{{- $args = concat $args (list "--proxy-port" (toString (int .proxyPort))) -}}
{{- end -}}
{{- $args = concat $args (list "--bind-host" .bindHost "--state-dir" (include "lattice.stateDir" $)) -}}
{{- with .agentImage -}}
{{- $args = concat $args (list "--agent-image" .) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toYaml $args -}}
{{- end -}}

{{- define "lattice.stateVolume" -}}
{{- or .Values.stateVolume .Values.cell.enabled -}}
{{- end -}}
