{{/* REGISTRY/NAME:TAG for one of the platform's images. */}}
{{- define "porchlight.image" -}}
{{ trimSuffix "/" .root.Values.image.registry }}/{{ .name }}:{{ .root.Values.image.tag }}
{{- end -}}

{{/* The namespaces whose Functions the gateway serves: `default` first. */}}
{{- define "porchlight.functionNamespaces" -}}
{{- $all := list "default" -}}
{{- range .Values.functionNamespaces -}}
{{- if not (has . $all) -}}{{- $all = append $all . -}}{{- end -}}
{{- end -}}
{{- toJson $all -}}
{{- end -}}

{{/* The gateways' NATS: nats.url, else the chart's own server if enabled, else none. */}}
{{- define "porchlight.queue" -}}
{{- if .Values.nats.url -}}
{{ .Values.nats.url }}
{{- else if .Values.nats.enabled -}}
nats://porchlight-nats:4222
{{- end -}}
{{- end -}}
