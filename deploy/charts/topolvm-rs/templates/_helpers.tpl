{{/* Labels every object carries. */}}
{{- define "topolvm-rs.labels" -}}
app.kubernetes.io/name: topolvm
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: topolvm-rs
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* The selector labels of one component's pods; the argument is (list $ "component"). */}}
{{- define "topolvm-rs.selectorLabels" -}}
app.kubernetes.io/name: topolvm
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* The topolvm-rs image. */}}
{{- define "topolvm-rs.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "topolvm-rs.pullPolicy" -}}
{{ .Values.image.pullPolicy | default "IfNotPresent" }}
{{- end }}

{{- define "topolvm-rs.pullSecrets" -}}
{{- with .Values.image.pullSecrets -}}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end }}

{{/* The Secret with the webhook's tls.crt and tls.key. */}}
{{- define "topolvm-rs.webhookSecret" -}}
{{- if and .Values.webhook.certManager (not .Values.webhook.caBundle) -}}
topolvm-controller-cert
{{- else -}}
{{ required "webhook.secretName: the Secret with tls.crt and tls.key (without webhook.certManager, or with webhook.caBundle)" .Values.webhook.secretName }}
{{- end }}
{{- end }}

{{/* Whether the controller serves the pod webhook. */}}
{{- define "topolvm-rs.webhookEnabled" -}}
{{- if .Values.webhook.podMutatingWebhook.enabled }}true{{ end }}
{{- end }}

{{/* lvmd.yaml, for the lvmd DaemonSet and for topolvm-node with lvmd embedded. */}}
{{- define "topolvm-rs.lvmdConfig" -}}
{{- $config := dict "socket-name" .Values.lvmd.socketName "device-classes" .Values.lvmd.deviceClasses "lvm-command-prefix" .Values.lvmd.lvmCommandPrefix -}}
{{- with .Values.lvmd.lvcreateOptionClasses }}
{{- $_ := set $config "lvcreate-option-classes" . }}
{{- end }}
{{- toYaml (merge $config .Values.lvmd.additionalLVMDYamlContent) }}
{{- end }}
