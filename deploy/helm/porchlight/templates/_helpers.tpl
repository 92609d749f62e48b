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
