{{/* Names and labels shared by the templates. */}}

{{- define "terway-agent.name" -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "terway-agent.labels" -}}
app.kubernetes.io/name: terway-agent
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: terway
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "terway-agent.selectorLabels" -}}
app.kubernetes.io/name: terway-agent
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "terway-agent.serviceAccountName" -}}
{{- .Values.serviceAccount.name | default (include "terway-agent.name" .) -}}
{{- end -}}

{{- define "terway-agent.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* The agent's settings file (docs/configuration.md, "Agent settings"). */}}
{{- define "terway-agent.settings" -}}
use_kubernetes: true
socket_path: {{ .Values.paths.runDir }}/eni.socket
lock_path: {{ .Values.paths.runDir }}/terwayd.lock
state_dir: {{ .Values.paths.stateDir }}
cni_conf_dir: {{ .Values.paths.cniConfDir }}
cni_bin_dir: {{ .Values.paths.cniBinDir }}
debug_listen: {{ printf "127.0.0.1:%v" .Values.agent.debugPort | quote }}
log_level: {{ .Values.agent.logLevel }}
log_json: true
{{- if .Values.agent.mode }}
mode: {{ .Values.agent.mode | quote }}
{{- end }}
plugin_config: {{ merge (dict "kubernetes" .Values.agent.kubernetes) .Values.agent.pluginConfig | toJson }}
{{- with .Values.agent.settings }}
{{ toYaml . }}
{{- end }}
{{- end -}}
