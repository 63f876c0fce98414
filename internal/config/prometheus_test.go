package config

import (
	"strings"
	"testing"
)

const promToken = "pr0m-s3cr3t-t0ken"

func TestPrometheusSettings(t *testing.T) {
	for _, tt := range []struct {
		name       string
		env        env
		url, token string
	}{
		{"none", env{}, "", ""},
		{"a URL", env{"UPDATER_PROMETHEUS_URL": "http://prometheus:9090"}, "http://prometheus:9090/", ""},
		{"a URL with a path prefix", env{"UPDATER_PROMETHEUS_URL": "https://metrics.example.com/prom/"}, "https://metrics.example.com/prom/", ""},
		{"and a token", env{"UPDATER_PROMETHEUS_URL": "http://prometheus:9090", "UPDATER_PROMETHEUS_TOKEN": promToken}, "http://prometheus:9090/", promToken},
		{"a token from a file", env{"UPDATER_PROMETHEUS_URL": "http://prometheus:9090", "UPDATER_PROMETHEUS_TOKEN_FILE": secretFile(t, promToken+"\n")}, "http://prometheus:9090/", promToken},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.env.load()
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if got.PrometheusURL != tt.url || got.PrometheusToken != tt.token {
				t.Errorf("got URL %q, token %q; want %q, %q", got.PrometheusURL, got.PrometheusToken, tt.url, tt.token)
			}
		})
	}
}

func TestPrometheusSettingsInvalid(t *testing.T) {
	url := env{"UPDATER_PROMETHEUS_URL": "http://prometheus:9090"}
	for _, tt := range []struct {
		name string
		env  env
		want string // the whole message
	}{
		{"not a URL", env{"UPDATER_PROMETHEUS_URL": "prometheus:9090"},
			`UPDATER_PROMETHEUS_URL="prometheus:9090": not an http(s) URL: use the Prometheus server's base URL, like "http://prometheus:9090"`},
		{"another scheme", env{"UPDATER_PROMETHEUS_URL": "tcp://prometheus:9090"},
			`UPDATER_PROMETHEUS_URL="tcp://prometheus:9090": not an http(s) URL: use the Prometheus server's base URL, like "http://prometheus:9090"`},
		{"credentials in the URL", env{"UPDATER_PROMETHEUS_URL": "http://admin:s3cr3t@prometheus:9090"},
			"UPDATER_PROMETHEUS_URL carries a user name or password: the URL is quoted in logs and reports; put a bearer token in UPDATER_PROMETHEUS_TOKEN (or UPDATER_PROMETHEUS_TOKEN_FILE) instead"},
		{"a token without the URL", env{"UPDATER_PROMETHEUS_TOKEN": promToken},
			"UPDATER_PROMETHEUS_TOKEN is set without UPDATER_PROMETHEUS_URL: set the Prometheus server's URL, or unset the token"},
		{"a token file without the URL", env{"UPDATER_PROMETHEUS_TOKEN_FILE": secretFile(t, promToken)},
			"UPDATER_PROMETHEUS_TOKEN is set without UPDATER_PROMETHEUS_URL: set the Prometheus server's URL, or unset the token"},
		{"a token with its scheme", env{"UPDATER_PROMETHEUS_URL": url["UPDATER_PROMETHEUS_URL"], "UPDATER_PROMETHEUS_TOKEN": "Bearer " + promToken},
			`UPDATER_PROMETHEUS_TOKEN contains whitespace: use the bearer token alone, without "Bearer "`},
		{"a token and its file", env{"UPDATER_PROMETHEUS_URL": url["UPDATER_PROMETHEUS_URL"], "UPDATER_PROMETHEUS_TOKEN": promToken, "UPDATER_PROMETHEUS_TOKEN_FILE": "/run/secrets/p"},
			`UPDATER_PROMETHEUS_TOKEN_FILE="/run/secrets/p": is set together with UPDATER_PROMETHEUS_TOKEN: set one or the other`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.env.load()
			if errs := errorsOf(t, err); len(errs) != 1 {
				t.Fatalf("got %v, want one error", err)
			}
			if err.Error() != tt.want {
				t.Errorf("got  %s\nwant %s", err, tt.want)
			}
			for _, s := range []string{"s3cr3t", promToken} {
				if strings.Contains(err.Error(), s) {
					t.Errorf("message shows a secret (%q): %s", s, err)
				}
			}
		})
	}
}
