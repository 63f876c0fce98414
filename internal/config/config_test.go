package config

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// env is a map-backed environment; load feeds it to Load as both the lookup
// and the environ list, the way os.LookupEnv and os.Environ agree in production.
type env map[string]string

func (e env) load() (Config, error) {
	var environ []string
	for k, v := range e {
		environ = append(environ, k+"="+v)
	}
	return Load(func(k string) (string, bool) {
		v, ok := e[k]
		return v, ok
	}, environ)
}

// errorsOf unpacks Load's joined error into its *Error values.
func errorsOf(t *testing.T, err error) []*Error {
	t.Helper()
	if err == nil {
		t.Fatal("Load succeeded, want an error")
	}
	joined, ok := err.(interface{ Unwrap() []error })
	if !ok {
		t.Fatalf("error %v is not a join", err)
	}
	var out []*Error
	for _, e := range joined.Unwrap() {
		var ce *Error
		if !errors.As(e, &ce) {
			t.Fatalf("error %v (%T) is not a *Error", e, e)
		}
		out = append(out, ce)
	}
	return out
}

func TestDefaults(t *testing.T) {
	want := Config{
		Schedule:            "@every 1m",
		Label:               "updater.enable",
		Stack:               "",
		DeployTimeout:       10 * time.Minute,
		DryRun:              false,
		LogFormat:           "json",
		LogLevel:            slog.LevelInfo,
		RegistryConcurrency: 8,
		DeployConcurrency:   4,
		RegistryTimeout:     30 * time.Second,
		WatchInterval:       time.Second,
		DockerTimeout:       30 * time.Second,
		LeaseTTL:            30 * time.Second,
		ApprovalTimeout:     24 * time.Hour,
		Listen:              ":8080",
		Prune:               Prune{Keep: 1},
		Slack:               Slack{APIURL: "https://slack.com/api/"},
		Rollbar:             Rollbar{Environment: "production", Endpoint: "https://api.rollbar.com/api/1/"},
	}
	for name, e := range map[string]env{
		"unset": {},
		// Compose files often write FOO= to mean "not set"; so do we.
		"empty": {
			"UPDATER_SCHEDULE": "", "UPDATER_LABEL": "", "UPDATER_STACK": "",
			"UPDATER_DEPLOY_TIMEOUT": "", "UPDATER_DRY_RUN": "", "UPDATER_LOG_FORMAT": "",
			"UPDATER_LOG_LEVEL": "", "UPDATER_REGISTRY_CONCURRENCY": "", "UPDATER_DEPLOY_CONCURRENCY": "",
			"UPDATER_REGISTRY_TIMEOUT": "", "UPDATER_WATCH_INTERVAL": "", "UPDATER_INSECURE_REGISTRIES": "",
			"SLACK_TOKEN": "", "SLACK_TOKEN_FILE": "", "SLACK_CHANNEL": "", "SLACK_WEBHOOK_URL": "",
			"SLACK_WEBHOOK_URL_FILE": "", "SLACK_API_URL": "", "ROLLBAR_TOKEN": "", "ROLLBAR_TOKEN_FILE": "",
			"ROLLBAR_ENVIRONMENT": "", "ROLLBAR_ENDPOINT": "",
			"UPDATER_LISTEN": "", "UPDATER_API_TOKEN": "", "UPDATER_API_TOKEN_FILE": "", "UPDATER_WEBHOOK_SECRET": "",
			"UPDATER_WEBHOOK_SECRET_FILE": "", "UPDATER_APPROVAL_TIMEOUT": "",
			"UPDATER_PRUNE": "", "UPDATER_PRUNE_KEEP": "", "UPDATER_PRUNE_IMAGE": "",
		},
		"blank":         {"UPDATER_SCHEDULE": "  ", "UPDATER_DRY_RUN": "\t", "UPDATER_LABEL": " \n"},
		"other vars":    {"HOME": "/root", "DOCKER_HOST": "tcp://x:2376", "XUPDATER_FOO": "1", "MY_UPDATER_X": "y"},
		"no equal sign": {"PATH": "/bin"},
	} {
		t.Run(name, func(t *testing.T) {
			got, err := e.load()
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("got %+v\nwant %+v", got, want)
			}
		})
	}
}

func TestValid(t *testing.T) {
	tests := []struct {
		name, value string
		check       func(Config) bool
	}{
		{"UPDATER_SCHEDULE", "*/5 * * * *", func(c Config) bool { return c.Schedule == "*/5 * * * *" }},
		{"UPDATER_SCHEDULE", "0 3 * * mon-fri", func(c Config) bool { return c.Schedule == "0 3 * * mon-fri" }},
		{"UPDATER_SCHEDULE", "@hourly", func(c Config) bool { return c.Schedule == "@hourly" }},
		{"UPDATER_SCHEDULE", "@daily", func(c Config) bool { return c.Schedule == "@daily" }},
		{"UPDATER_SCHEDULE", "@every 1s", func(c Config) bool { return c.Schedule == "@every 1s" }},
		{"UPDATER_SCHEDULE", "@every 1h30m", func(c Config) bool { return c.Schedule == "@every 1h30m" }},
		{"UPDATER_SCHEDULE", "  @every 5m  ", func(c Config) bool { return c.Schedule == "@every 5m" }},
		{"UPDATER_SCHEDULE", "CRON_TZ=UTC 0 3 * * *", func(c Config) bool { return c.Schedule == "CRON_TZ=UTC 0 3 * * *" }},
		{"UPDATER_SCHEDULE", "TZ=UTC @every 10s", func(c Config) bool { return c.Schedule == "TZ=UTC @every 10s" }},
		{"UPDATER_LABEL", "com.example.autoupdate", func(c Config) bool { return c.Label == "com.example.autoupdate" }},
		{"UPDATER_LABEL", " my-label ", func(c Config) bool { return c.Label == "my-label" }},
		{"UPDATER_STACK", "prod", func(c Config) bool { return c.Stack == "prod" }},
		{"UPDATER_DEPLOY_TIMEOUT", "10s", func(c Config) bool { return c.DeployTimeout == 10*time.Second }},
		{"UPDATER_DEPLOY_TIMEOUT", "1h30m", func(c Config) bool { return c.DeployTimeout == 90*time.Minute }},
		{"UPDATER_DEPLOY_TIMEOUT", "24h", func(c Config) bool { return c.DeployTimeout == 24*time.Hour }},
		{"UPDATER_DRY_RUN", "true", func(c Config) bool { return c.DryRun }},
		{"UPDATER_DRY_RUN", "1", func(c Config) bool { return c.DryRun }},
		{"UPDATER_DRY_RUN", "TRUE", func(c Config) bool { return c.DryRun }},
		{"UPDATER_DRY_RUN", "false", func(c Config) bool { return !c.DryRun }},
		{"UPDATER_DRY_RUN", "0", func(c Config) bool { return !c.DryRun }},
		{"UPDATER_LOG_FORMAT", "json", func(c Config) bool { return c.LogFormat == "json" }},
		{"UPDATER_LOG_FORMAT", "text", func(c Config) bool { return c.LogFormat == "text" }},
		{"UPDATER_LOG_FORMAT", "TEXT", func(c Config) bool { return c.LogFormat == "text" }},
		{"UPDATER_LOG_LEVEL", "debug", func(c Config) bool { return c.LogLevel == slog.LevelDebug }},
		{"UPDATER_LOG_LEVEL", "INFO", func(c Config) bool { return c.LogLevel == slog.LevelInfo }},
		{"UPDATER_LOG_LEVEL", "Warn", func(c Config) bool { return c.LogLevel == slog.LevelWarn }},
		{"UPDATER_LOG_LEVEL", "error", func(c Config) bool { return c.LogLevel == slog.LevelError }},
		{"UPDATER_REGISTRY_CONCURRENCY", "1", func(c Config) bool { return c.RegistryConcurrency == 1 }},
		{"UPDATER_REGISTRY_CONCURRENCY", "64", func(c Config) bool { return c.RegistryConcurrency == 64 }},
		{"UPDATER_DEPLOY_CONCURRENCY", "1", func(c Config) bool { return c.DeployConcurrency == 1 }},
		{"UPDATER_DEPLOY_CONCURRENCY", " 16 ", func(c Config) bool { return c.DeployConcurrency == 16 }},
		{"UPDATER_DEPLOY_CONCURRENCY", "64", func(c Config) bool { return c.DeployConcurrency == 64 }},
		{"UPDATER_REGISTRY_TIMEOUT", "1s", func(c Config) bool { return c.RegistryTimeout == time.Second }},
		{"UPDATER_REGISTRY_TIMEOUT", "10m", func(c Config) bool { return c.RegistryTimeout == 10*time.Minute }},
		{"UPDATER_DOCKER_TIMEOUT", "5s", func(c Config) bool { return c.DockerTimeout == 5*time.Second }},
		{"UPDATER_DOCKER_TIMEOUT", "10m", func(c Config) bool { return c.DockerTimeout == 10*time.Minute }},
		{"UPDATER_WATCH_INTERVAL", "100ms", func(c Config) bool { return c.WatchInterval == 100*time.Millisecond }},
		{"UPDATER_WATCH_INTERVAL", "1m", func(c Config) bool { return c.WatchInterval == time.Minute }},
		{"UPDATER_LEASE_TTL", "5s", func(c Config) bool { return c.LeaseTTL == 5*time.Second }},
	}
	for _, tt := range tests {
		t.Run(tt.name+"="+tt.value, func(t *testing.T) {
			got, err := env{tt.name: tt.value}.load()
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if !tt.check(got) {
				t.Errorf("got %+v", got)
			}
		})
	}
}

func TestInvalid(t *testing.T) {
	const cronHint = `use a 5-field cron expression like "*/5 * * * *" or a descriptor like "@every 1m" or "@hourly"`
	tests := []struct {
		name, value string
		hint        string // what the message must say is valid
	}{
		{"UPDATER_SCHEDULE", "* * * *", cronHint},
		{"UPDATER_SCHEDULE", "0 * * * * *", cronHint}, // six fields: seconds are not supported
		{"UPDATER_SCHEDULE", "61 * * * *", cronHint},
		{"UPDATER_SCHEDULE", "@hourlyy", cronHint},
		{"UPDATER_SCHEDULE", "every 1m", cronHint},
		{"UPDATER_SCHEDULE", "@every 1 minute", cronHint},
		{"UPDATER_SCHEDULE", "TZ=UTC", cronHint},
		{"UPDATER_SCHEDULE", "CRON_TZ=Nowhere/Atlantis 0 * * * *", cronHint},
		{"UPDATER_SCHEDULE", "@every 500ms", `"@every 1s" or longer`},
		{"UPDATER_SCHEDULE", "@every 0s", `"@every 1s" or longer`},
		{"UPDATER_SCHEDULE", "@every -1m", `"@every 1s" or longer`},
		{"UPDATER_SCHEDULE", "TZ=UTC @every 500ms", `"@every 1s" or longer`},
		{"UPDATER_SCHEDULE", "@every 1.5s", `whole number of seconds`},
		{"UPDATER_LABEL", "updater enable", `without whitespace or "="`},
		{"UPDATER_LABEL", "updater.enable=true", `without whitespace or "="`},
		{"UPDATER_STACK", "my stack", "stack name"},
		{"UPDATER_DEPLOY_TIMEOUT", "10 minutes", `use a Go duration between 10s and 24h, like "10m" or "1h30m"`},
		{"UPDATER_DEPLOY_TIMEOUT", "600", `use a Go duration between 10s and 24h`},
		{"UPDATER_DEPLOY_TIMEOUT", "9s", `use a Go duration between 10s and 24h`},
		{"UPDATER_DEPLOY_TIMEOUT", "25h", `use a Go duration between 10s and 24h`},
		{"UPDATER_DEPLOY_TIMEOUT", "-10m", `use a Go duration between 10s and 24h`},
		{"UPDATER_DRY_RUN", "yes", `use "true" or "false"`},
		{"UPDATER_DRY_RUN", "2", `use "true" or "false"`},
		{"UPDATER_LOG_FORMAT", "logfmt", `use "json" or "text"`},
		{"UPDATER_LOG_LEVEL", "verbose", `use "debug", "info", "warn" or "error"`},
		{"UPDATER_LOG_LEVEL", "warning", `use "debug", "info", "warn" or "error"`},
		{"UPDATER_LOG_LEVEL", "info+2", `use "debug", "info", "warn" or "error"`},
		{"UPDATER_REGISTRY_CONCURRENCY", "eight", "use a whole number between 1 and 64"},
		{"UPDATER_REGISTRY_CONCURRENCY", "1.5", "use a whole number between 1 and 64"},
		{"UPDATER_REGISTRY_CONCURRENCY", "0", "use a whole number between 1 and 64"},
		{"UPDATER_REGISTRY_CONCURRENCY", "65", "use a whole number between 1 and 64"},
		{"UPDATER_DEPLOY_CONCURRENCY", "four", `not a whole number: use a whole number between 1 and 64, like "4" (1 deploys one after another, in the order planned)`},
		{"UPDATER_DEPLOY_CONCURRENCY", "2.5", "not a whole number: use a whole number between 1 and 64"},
		{"UPDATER_DEPLOY_CONCURRENCY", "0", "out of range: use a whole number between 1 and 64"},
		{"UPDATER_DEPLOY_CONCURRENCY", "-1", "out of range: use a whole number between 1 and 64"},
		{"UPDATER_DEPLOY_CONCURRENCY", "65", "out of range: use a whole number between 1 and 64"},
		{"UPDATER_REGISTRY_TIMEOUT", "30", "use a Go duration between 1s and 10m"},
		{"UPDATER_REGISTRY_TIMEOUT", "999ms", "use a Go duration between 1s and 10m"},
		{"UPDATER_REGISTRY_TIMEOUT", "11m", "use a Go duration between 1s and 10m"},
		{"UPDATER_DOCKER_TIMEOUT", "30", "use a Go duration between 5s and 10m"},
		{"UPDATER_DOCKER_TIMEOUT", "4s", "use a Go duration between 5s and 10m"},
		{"UPDATER_DOCKER_TIMEOUT", "11m", "use a Go duration between 5s and 10m"},
		{"UPDATER_WATCH_INTERVAL", "fast", "use a Go duration between 100ms and 1m"},
		{"UPDATER_WATCH_INTERVAL", "99ms", "use a Go duration between 100ms and 1m"},
		{"UPDATER_WATCH_INTERVAL", "61s", "use a Go duration between 100ms and 1m"},
		{"UPDATER_LEASE_TTL", "2s", "use a Go duration between 3s and 10m"},
		{"UPDATER_LEASE_TTL", "soon", "use a Go duration between 3s and 10m"},
	}
	for _, tt := range tests {
		t.Run(tt.name+"="+tt.value, func(t *testing.T) {
			got, err := env{tt.name: tt.value}.load()
			if !reflect.DeepEqual(got, Config{}) {
				t.Errorf("Load returned %+v with its error, want the zero Config", got)
			}
			errs := errorsOf(t, err)
			if len(errs) != 1 {
				t.Fatalf("got %d errors, want 1: %v", len(errs), err)
			}
			e := errs[0]
			if e.Var != tt.name || e.Value != tt.value {
				t.Errorf("got Var=%q Value=%q, want %q %q", e.Var, e.Value, tt.name, tt.value)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, tt.name+`="`+tt.value+`": `) {
				t.Errorf("message %q does not start with the variable and quoted value", msg)
			}
			if !strings.Contains(msg, tt.hint) {
				t.Errorf("message %q does not contain hint %q", msg, tt.hint)
			}
			if strings.Contains(msg, "\n") {
				t.Errorf("message %q is more than one line", msg)
			}
		})
	}
}

// UPDATER_INSECURE_REGISTRIES is a list of host:port, matched as image
// references name registries; nothing else is taken, and the refusal
// says what is right.
func TestInsecureRegistries(t *testing.T) {
	valid := []struct {
		value string
		want  []string
	}{
		{"registry.lan:5000", []string{"registry.lan:5000"}},
		{"Registry.LAN:5000, 10.0.0.7:5000,,[fd00::1]:5000,", []string{"registry.lan:5000", "10.0.0.7:5000", "[fd00::1]:5000"}},
		{"registry.lan:5000,REGISTRY.lan:5000", []string{"registry.lan:5000"}},
		{"registry:80", []string{"registry:80"}},
	}
	for _, tt := range valid {
		t.Run(tt.value, func(t *testing.T) {
			got, err := env{"UPDATER_INSECURE_REGISTRIES": tt.value}.load()
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got.InsecureRegistries, tt.want) {
				t.Errorf("got %q, want %q", got.InsecureRegistries, tt.want)
			}
		})
	}
	const hint = `use a comma-separated list of host:port, like "registry.lan:5000,10.0.0.7:5000" (no scheme or path; loopback registries need no entry)`
	invalid := []struct{ value, reason string }{
		{"registry.lan", `"registry.lan" is not host:port`},
		{"http://registry.lan:5000", `"http://registry.lan:5000" is not host:port`},
		{"registry.lan:5000/v2", `"registry.lan:5000/v2": the port is not a number from 1 to 65535`},
		{"registry.lan:0", `"registry.lan:0": the port is not a number from 1 to 65535`},
		{"registry.lan:http", `"registry.lan:http": the port is not a number from 1 to 65535`},
		{"ok.lan:5000,bad_host:5000", `"bad_host:5000": "bad_host" is not a host name or IP address`},
		{":5000", `":5000": "" is not a host name or IP address`},
		{"registry.lan:5000 other.lan:5000", `"registry.lan:5000 other.lan:5000" is not host:port`},
		{",", "lists no registry"},
	}
	for _, tt := range invalid {
		t.Run(tt.value, func(t *testing.T) {
			_, err := env{"UPDATER_INSECURE_REGISTRIES": tt.value}.load()
			want := `UPDATER_INSECURE_REGISTRIES="` + tt.value + `": ` + tt.reason + ": " + hint
			if err == nil || err.Error() != want {
				t.Errorf("got  %v\nwant %s", err, want)
			}
		})
	}
	if c, err := (env{}).load(); err != nil || c.InsecureRegistries != nil {
		t.Errorf("default: got %q, %v; want none", c.InsecureRegistries, err)
	}
}

// UPDATER_SOURCE_HOSTS is a list of hosts, with a port where the source
// URLs carry one; nothing else is taken.
func TestSourceHosts(t *testing.T) {
	got, err := env{"UPDATER_SOURCE_HOSTS": " GitLab.Example.com, git.corp.example:8443,,gitlab.example.com"}.load()
	if err != nil || !slices.Equal(got.SourceHosts, []string{"gitlab.example.com", "git.corp.example:8443"}) {
		t.Fatalf("got %q, %v", got.SourceHosts, err)
	}
	for _, v := range []string{"https://gitlab.example.com", "gitlab.example.com/group", "bad_host", "git.corp:0", ","} {
		if _, err := (env{"UPDATER_SOURCE_HOSTS": v}).load(); err == nil || !strings.Contains(err.Error(), "UPDATER_SOURCE_HOSTS") {
			t.Errorf("%q: %v, want an error naming UPDATER_SOURCE_HOSTS", v, err)
		}
	}
	if c, err := (env{}).load(); err != nil || c.SourceHosts != nil {
		t.Errorf("default: got %q, %v; want none", c.SourceHosts, err)
	}
}

func TestErrorMessage(t *testing.T) {
	_, err := env{"UPDATER_DEPLOY_TIMEOUT": "10 minutes"}.load()
	want := `UPDATER_DEPLOY_TIMEOUT="10 minutes": not a duration: use a Go duration between 10s and 24h, like "10m" or "1h30m"`
	if err == nil || err.Error() != want {
		t.Errorf("got  %v\nwant %s", err, want)
	}
}

func TestUnknown(t *testing.T) {
	tests := []struct {
		name string
		want string
	}{
		{"UPDATER_SCHEDUEL", "UPDATER_SCHEDUEL is not a known setting; did you mean UPDATER_SCHEDULE?"},
		{"UPDATER_DRYRUN", "UPDATER_DRYRUN is not a known setting; did you mean UPDATER_DRY_RUN?"},
		{"UPDATER_LOGLEVEL", "UPDATER_LOGLEVEL is not a known setting; did you mean UPDATER_LOG_LEVEL?"},
		{"UPDATER_WATCH_INTERVALS", "UPDATER_WATCH_INTERVALS is not a known setting; did you mean UPDATER_WATCH_INTERVAL?"},
		// The environment is case-sensitive, so this one would otherwise be ignored.
		{"updater_dry_run", "updater_dry_run is not a known setting; did you mean UPDATER_DRY_RUN?"},
		{"UPDATER_PASSWORD", "UPDATER_PASSWORD is not a known setting; known settings: " + strings.Join(Names(), ", ")},
		{"UPDATER_", "UPDATER_ is not a known setting; did you mean UPDATER_URL?"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			const secret = "hunter2"
			_, err := env{tt.name: secret}.load()
			errs := errorsOf(t, err)
			if len(errs) != 1 {
				t.Fatalf("got %d errors, want 1: %v", len(errs), err)
			}
			if errs[0].Var != tt.name || errs[0].Value != "" {
				t.Errorf("got Var=%q Value=%q, want %q and no value", errs[0].Var, errs[0].Value, tt.name)
			}
			if got := err.Error(); got != tt.want {
				t.Errorf("got  %s\nwant %s", got, tt.want)
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("message %q shows the value of an unknown variable", err)
			}
		})
	}
}

func TestUnknownEvenWhenEmpty(t *testing.T) {
	// A typo is a typo whatever its value; "" here is not "unset" because the
	// name itself is what is wrong.
	_, err := env{"UPDATER_SCHEDUEL": ""}.load()
	if errs := errorsOf(t, err); len(errs) != 1 || errs[0].Var != "UPDATER_SCHEDUEL" {
		t.Errorf("got %v", err)
	}
}

func TestEveryProblemReported(t *testing.T) {
	_, err := env{
		"UPDATER_SCHEDULE":             "@every 500ms",
		"UPDATER_DEPLOY_TIMEOUT":       "10 minutes",
		"UPDATER_DRY_RUN":              "maybe",
		"UPDATER_REGISTRY_CONCURRENCY": "0",
		"UPDATER_SCHEDUEL":             "x",
		"UPDATER_DRYRUN":               "true",
		"UPDATER_LOG_LEVEL":            "debug", // valid: must not be reported
	}.load()
	var got []string
	for _, e := range errorsOf(t, err) {
		got = append(got, e.Var)
	}
	// Known settings in table order, then unknown names sorted: stable output
	// whatever order os.Environ returns.
	want := []string{
		"UPDATER_SCHEDULE", "UPDATER_DEPLOY_TIMEOUT", "UPDATER_DRY_RUN", "UPDATER_REGISTRY_CONCURRENCY",
		"UPDATER_DRYRUN", "UPDATER_SCHEDUEL",
	}
	if !slices.Equal(got, want) {
		t.Errorf("got %v\nwant %v", got, want)
	}
	if n := strings.Count(err.Error(), "\n"); n != len(want)-1 {
		t.Errorf("got %d lines, want one per error:\n%v", n+1, err)
	}
}

func TestUnknownReportedOnce(t *testing.T) {
	environ := []string{"UPDATER_SCHEDUEL=a", "UPDATER_SCHEDUEL=b"}
	_, err := Load(func(string) (string, bool) { return "", false }, environ)
	if errs := errorsOf(t, err); len(errs) != 1 {
		t.Errorf("got %v, want one error", err)
	}
}

func TestNames(t *testing.T) {
	names := Names()
	if !slices.IsSorted(names) {
		t.Errorf("Names() not sorted: %v", names)
	}
	if len(names) != 61 {
		t.Errorf("got %d names, want 61: %v", len(names), names)
	}
	for _, n := range names {
		if !strings.HasPrefix(n, "UPDATER_") && !strings.HasPrefix(n, "SLACK_") && !strings.HasPrefix(n, "ROLLBAR_") {
			t.Errorf("name %q is outside the UPDATER_, SLACK_ and ROLLBAR_ namespaces", n)
		}
		// Every known name must be accepted as such, or the unknown-name check
		// would reject the documented settings.
		if _, err := (env{n: ""}).load(); err != nil {
			t.Errorf("%s: %v", n, err)
		}
	}
	names[0] = "mutated"
	if Names()[0] == "mutated" {
		t.Error("Names() shares its slice between calls")
	}
}

func TestDistance(t *testing.T) {
	for _, tt := range []struct {
		a, b string
		want int
	}{
		{"", "", 0},
		{"abc", "", 3},
		{"kitten", "sitting", 3},
		{"SCHEDUEL", "SCHEDULE", 1}, // transposition is one edit
		{"DRYRUN", "DRY_RUN", 1},
	} {
		if got := distance(tt.a, tt.b); got != tt.want {
			t.Errorf("distance(%q, %q) = %d, want %d", tt.a, tt.b, got, tt.want)
		}
	}
}

// FuzzSchedule guards against robfig/cron panicking on input we pass through.
func FuzzSchedule(f *testing.F) {
	for _, s := range []string{"@every 1m", "*/5 * * * *", "TZ=UTC", "CRON_TZ=UTC @hourly", "0-59/0 * * * *"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		_, _ = env{"UPDATER_SCHEDULE": s}.load()
	})
}

const (
	slackToken   = "xoxb-1111-2222-s3cr3tslack"
	webhookURL   = "https://hooks.slack.com/services/T000/B000/s3cr3thook"
	rollbarToken = "0123456789abcdef0123456789abcdef"
)

// secretFile writes content to a file and returns its path.
func secretFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestNotifySettings(t *testing.T) {
	tests := []struct {
		name string
		env  env
		want func(Config) bool
	}{
		{"bot token and channel", env{"SLACK_TOKEN": slackToken, "SLACK_CHANNEL": "#deploys"}, func(c Config) bool {
			return c.Slack.Token == slackToken && c.Slack.Channel == "#deploys" && c.Slack.WebhookURL == ""
		}},
		{"token from a file, newline trimmed", env{"SLACK_TOKEN_FILE": secretFile(t, slackToken+"\n"), "SLACK_CHANNEL": "C0123"}, func(c Config) bool {
			return c.Slack.Token == slackToken
		}},
		{"CRLF trimmed too", env{"SLACK_TOKEN_FILE": secretFile(t, slackToken+"\r\n"), "SLACK_CHANNEL": "C0123"}, func(c Config) bool {
			return c.Slack.Token == slackToken
		}},
		{"API URL gets its slash", env{"SLACK_TOKEN": slackToken, "SLACK_CHANNEL": "C0123", "SLACK_API_URL": "http://127.0.0.1:9/api"}, func(c Config) bool {
			return c.Slack.APIURL == "http://127.0.0.1:9/api/"
		}},
		{"webhook", env{"SLACK_WEBHOOK_URL": webhookURL}, func(c Config) bool {
			return c.Slack.WebhookURL == webhookURL && c.Slack.Token == ""
		}},
		{"webhook from a file", env{"SLACK_WEBHOOK_URL_FILE": secretFile(t, webhookURL+"\n")}, func(c Config) bool {
			return c.Slack.WebhookURL == webhookURL
		}},
		{"rollbar", env{"ROLLBAR_TOKEN": rollbarToken}, func(c Config) bool {
			return c.Rollbar == Rollbar{Token: rollbarToken, Environment: "production", Endpoint: "https://api.rollbar.com/api/1/"}
		}},
		{"rollbar from a file, all set", env{"ROLLBAR_TOKEN_FILE": secretFile(t, rollbarToken+"\n"),
			"ROLLBAR_ENVIRONMENT": "staging", "ROLLBAR_ENDPOINT": "http://127.0.0.1:9/api/1"}, func(c Config) bool {
			return c.Rollbar == Rollbar{Token: rollbarToken, Environment: "staging", Endpoint: "http://127.0.0.1:9/api/1/"}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.env.load()
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if !tt.want(got) {
				t.Errorf("got %+v / %+v", got.Slack, got.Rollbar)
			}
		})
	}
}

func TestNotifySettingsInvalid(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope")
	empty := secretFile(t, "\n")
	badTokenFile := secretFile(t, "hunter2-s3cr3t\n")
	spacedHookFile := secretFile(t, webhookURL+" \n")
	tests := []struct {
		name    string
		env     env
		wantVar string
		want    string // the whole message
	}{
		{"token without channel", env{"SLACK_TOKEN": slackToken}, "SLACK_CHANNEL",
			"SLACK_CHANNEL is not set, but SLACK_TOKEN is: name the channel for deploy messages, by ID like C0123456789 or by name like #deploys (the bot must be a member)"},
		{"channel without token", env{"SLACK_CHANNEL": "#deploys"}, "SLACK_CHANNEL",
			`SLACK_CHANNEL="#deploys": is set without SLACK_TOKEN: set SLACK_TOKEN (or SLACK_TOKEN_FILE) to a bot token, or unset SLACK_CHANNEL`},
		{"channel with a webhook", env{"SLACK_CHANNEL": "#deploys", "SLACK_WEBHOOK_URL": webhookURL}, "SLACK_CHANNEL",
			`SLACK_CHANNEL="#deploys": is set without SLACK_TOKEN: an incoming webhook posts to the channel it was made for; unset SLACK_CHANNEL`},
		{"token and webhook", env{"SLACK_TOKEN": slackToken, "SLACK_CHANNEL": "C0123", "SLACK_WEBHOOK_URL": webhookURL}, "SLACK_WEBHOOK_URL",
			"SLACK_WEBHOOK_URL is set together with SLACK_TOKEN: use one, or every deploy is posted twice (the token keeps one message per deploy up to date; the webhook posts a start and an end)"},
		{"value and file", env{"SLACK_TOKEN": slackToken, "SLACK_TOKEN_FILE": "/run/secrets/slack", "SLACK_CHANNEL": "C0123"}, "SLACK_TOKEN_FILE",
			`SLACK_TOKEN_FILE="/run/secrets/slack": is set together with SLACK_TOKEN: set one or the other`},
		{"missing file", env{"ROLLBAR_TOKEN_FILE": missing}, "ROLLBAR_TOKEN_FILE",
			`ROLLBAR_TOKEN_FILE="` + missing + `": cannot be read: open ` + missing + `: no such file or directory`},
		{"empty file", env{"SLACK_WEBHOOK_URL_FILE": empty}, "SLACK_WEBHOOK_URL_FILE",
			`SLACK_WEBHOOK_URL_FILE="` + empty + `": names an empty file: put the SLACK_WEBHOOK_URL value in it`},
		{"not a slack token", env{"SLACK_TOKEN": "hunter2-s3cr3t", "SLACK_CHANNEL": "C0123"}, "SLACK_TOKEN",
			"SLACK_TOKEN does not look like a Slack token: a bot token starts with xoxb-"},
		{"not a slack token, from a file", env{"SLACK_TOKEN_FILE": badTokenFile, "SLACK_CHANNEL": "C0123"}, "SLACK_TOKEN_FILE",
			`SLACK_TOKEN_FILE="` + badTokenFile + `": does not look like a Slack token: a bot token starts with xoxb-`},
		{"webhook URL as the token", env{"SLACK_TOKEN": webhookURL, "SLACK_CHANNEL": "C0123"}, "SLACK_TOKEN",
			"SLACK_TOKEN is a URL, not a token: an incoming webhook URL goes in SLACK_WEBHOOK_URL"},
		{"token with a space", env{"SLACK_TOKEN": "xoxb-1 s3cr3t", "SLACK_CHANNEL": "C0123"}, "SLACK_TOKEN",
			"SLACK_TOKEN contains whitespace: use the bot token exactly as Slack shows it (xoxb-…)"},
		{"malformed webhook", env{"SLACK_WEBHOOK_URL": "hooks.slack.com/services/s3cr3t"}, "SLACK_WEBHOOK_URL",
			"SLACK_WEBHOOK_URL is not an http(s) URL: use the incoming webhook URL Slack shows, like https://hooks.slack.com/services/T…/B…/…"},
		{"webhook file with a trailing space", env{"SLACK_WEBHOOK_URL_FILE": spacedHookFile}, "SLACK_WEBHOOK_URL_FILE",
			`SLACK_WEBHOOK_URL_FILE="` + spacedHookFile + `": is not an http(s) URL (it contains whitespace): use the incoming webhook URL Slack shows, like https://hooks.slack.com/services/T…/B…/…`},
		{"webhook with a space", env{"SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T0/B0/s3cr3t x"}, "SLACK_WEBHOOK_URL",
			"SLACK_WEBHOOK_URL is not an http(s) URL (it contains whitespace): use the incoming webhook URL Slack shows, like https://hooks.slack.com/services/T…/B…/…"},
		{"API URL with a space", env{"SLACK_TOKEN": slackToken, "SLACK_CHANNEL": "C0123", "SLACK_API_URL": "http://127.0.0.1:9/a pi/"}, "SLACK_API_URL",
			`SLACK_API_URL="http://127.0.0.1:9/a pi/": not an http(s) URL (it contains whitespace): use the Slack Web API base, like "https://slack.com/api/"`},
		{"webhook without a path", env{"SLACK_WEBHOOK_URL": "https://hooks.slack.com/"}, "SLACK_WEBHOOK_URL",
			"SLACK_WEBHOOK_URL is a URL without a path: use the incoming webhook URL Slack shows, like https://hooks.slack.com/services/T…/B…/…"},
		{"two channels", env{"SLACK_TOKEN": slackToken, "SLACK_CHANNEL": "#a,#b"}, "SLACK_CHANNEL",
			`SLACK_CHANNEL="#a,#b": not one channel: use a channel ID like C0123456789 or a name like #deploys`},
		{"API URL without token", env{"SLACK_WEBHOOK_URL": webhookURL, "SLACK_API_URL": "http://127.0.0.1:9/api/"}, "SLACK_API_URL",
			`SLACK_API_URL="http://127.0.0.1:9/api/": is set without SLACK_TOKEN: it only redirects the bot token's requests`},
		{"API URL malformed", env{"SLACK_TOKEN": slackToken, "SLACK_CHANNEL": "C0123", "SLACK_API_URL": "ftp://x/"}, "SLACK_API_URL",
			`SLACK_API_URL="ftp://x/": not an http(s) URL: use the Slack Web API base, like "https://slack.com/api/"`},
		{"rollbar environment without token", env{"ROLLBAR_ENVIRONMENT": "staging"}, "ROLLBAR_ENVIRONMENT",
			"ROLLBAR_ENVIRONMENT is set without ROLLBAR_TOKEN: set ROLLBAR_TOKEN (or ROLLBAR_TOKEN_FILE) to turn Rollbar on"},
		{"rollbar endpoint malformed", env{"ROLLBAR_TOKEN": rollbarToken, "ROLLBAR_ENDPOINT": "api.rollbar.com"}, "ROLLBAR_ENDPOINT",
			`ROLLBAR_ENDPOINT="api.rollbar.com": not an http(s) URL: use the Rollbar API base, like "https://api.rollbar.com/api/1/"`},
		{"rollbar token with a space", env{"ROLLBAR_TOKEN": "0123 s3cr3t"}, "ROLLBAR_TOKEN",
			"ROLLBAR_TOKEN contains whitespace: use the project access token (post_server_item scope) exactly as Rollbar shows it"},
		{"typo in a slack name", env{"SLACK_CHANEL": "#deploys"}, "SLACK_CHANEL",
			"SLACK_CHANEL is not a known setting; did you mean SLACK_CHANNEL?"},
		{"another tool's name", env{"ROLLBAR_ACCESS_TOKEN": "s3cr3t"}, "ROLLBAR_ACCESS_TOKEN",
			"ROLLBAR_ACCESS_TOKEN is not a known setting; known settings: " + strings.Join(Names(), ", ")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.env.load()
			errs := errorsOf(t, err)
			if len(errs) != 1 || errs[0].Var != tt.wantVar {
				t.Fatalf("got %v, want one error about %s", err, tt.wantVar)
			}
			if err.Error() != tt.want {
				t.Errorf("got  %s\nwant %s", err, tt.want)
			}
			for _, s := range []string{"s3cr3t", slackToken, webhookURL, rollbarToken} {
				if strings.Contains(err.Error(), s) {
					t.Errorf("message shows a secret (%q): %s", s, err)
				}
			}
		})
	}
}

const (
	apiToken      = "0123456789abcdef-api-token"
	webhookSecret = "0123456789abcdef-webhook-secret"
)

func TestHTTPSettings(t *testing.T) {
	tests := []struct {
		name string
		env  env
		want func(Config) bool
	}{
		{"listen on loopback", env{"UPDATER_LISTEN": "127.0.0.1:9090"}, func(c Config) bool { return c.Listen == "127.0.0.1:9090" }},
		{"listen on a port", env{"UPDATER_LISTEN": ":80"}, func(c Config) bool { return c.Listen == ":80" }},
		{"listen on IPv6", env{"UPDATER_LISTEN": "[::1]:8080"}, func(c Config) bool { return c.Listen == "[::1]:8080" }},
		{"listen on a free port", env{"UPDATER_LISTEN": "127.0.0.1:0"}, func(c Config) bool { return c.Listen == "127.0.0.1:0" }},
		{"listen by name", env{"UPDATER_LISTEN": "localhost:8080"}, func(c Config) bool { return c.Listen == "localhost:8080" }},
		{"tokens", env{"UPDATER_API_TOKEN": apiToken, "UPDATER_WEBHOOK_SECRET": webhookSecret}, func(c Config) bool {
			return c.APIToken == apiToken && c.WebhookSecret == webhookSecret
		}},
		{"tokens from files", env{"UPDATER_API_TOKEN_FILE": secretFile(t, apiToken+"\n"),
			"UPDATER_WEBHOOK_SECRET_FILE": secretFile(t, webhookSecret+"\r\n")}, func(c Config) bool {
			return c.APIToken == apiToken && c.WebhookSecret == webhookSecret
		}},
		{"read token and per-source secrets", env{"UPDATER_API_TOKEN": apiToken, "UPDATER_API_READ_TOKEN": "read-token-0123456789",
			"UPDATER_WEBHOOK_SECRET_GITHUB": "github-secret-0123456789", "UPDATER_WEBHOOK_SECRET_DOCKERHUB_FILE": secretFile(t, "hub-secret-0123456789\n"),
			"UPDATER_WEBHOOK_SECRET_DISTRIBUTION": "dist-secret-0123456789"}, func(c Config) bool {
			return c.APIReadToken == "read-token-0123456789" && c.WebhookSecretGitHub == "github-secret-0123456789" &&
				c.WebhookSecretDockerHub == "hub-secret-0123456789" && c.WebhookSecretDistribution == "dist-secret-0123456789" && c.WebhookSecret == ""
		}},
		{"the running updater's URL", env{"UPDATER_URL": "http://127.0.0.1:8080", "UPDATER_API_TOKEN": apiToken}, func(c Config) bool {
			return c.URL == "http://127.0.0.1:8080/" && c.APIToken == apiToken
		}},
		{"the running updater's URL under a path", env{"UPDATER_URL": "https://ops.example.com/updater/", "UPDATER_API_TOKEN": apiToken},
			func(c Config) bool { return c.URL == "https://ops.example.com/updater/" }},
		{"approval timeout", env{"UPDATER_APPROVAL_TIMEOUT": "72h"}, func(c Config) bool { return c.ApprovalTimeout == 72*time.Hour }},
		{"shortest approval timeout", env{"UPDATER_APPROVAL_TIMEOUT": "1m"}, func(c Config) bool { return c.ApprovalTimeout == time.Minute }},
		{"longest approval timeout", env{"UPDATER_APPROVAL_TIMEOUT": "720h"}, func(c Config) bool { return c.ApprovalTimeout == 720*time.Hour }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.env.load()
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if !tt.want(got) {
				t.Errorf("got %+v", got)
			}
		})
	}
}

func TestHTTPSettingsInvalid(t *testing.T) {
	short := secretFile(t, "s3cr3t\n")
	tests := []struct {
		name    string
		env     env
		wantVar string
		want    string // the whole message
	}{
		{"listen without port", env{"UPDATER_LISTEN": "8080"}, "UPDATER_LISTEN",
			`UPDATER_LISTEN="8080": not an address: use host:port or :port, like ":8080" or "127.0.0.1:8080"`},
		{"listen on a named port", env{"UPDATER_LISTEN": ":http"}, "UPDATER_LISTEN",
			`UPDATER_LISTEN=":http": the port is not a number from 0 to 65535: use host:port or :port, like ":8080" or "127.0.0.1:8080"`},
		{"listen port too big", env{"UPDATER_LISTEN": ":65536"}, "UPDATER_LISTEN",
			`UPDATER_LISTEN=":65536": the port is not a number from 0 to 65535: use host:port or :port, like ":8080" or "127.0.0.1:8080"`},
		{"listen URL", env{"UPDATER_LISTEN": "http://0.0.0.0:8080"}, "UPDATER_LISTEN",
			`UPDATER_LISTEN="http://0.0.0.0:8080": not an address: use host:port or :port, like ":8080" or "127.0.0.1:8080"`},
		{"short API token", env{"UPDATER_API_TOKEN": "s3cr3t"}, "UPDATER_API_TOKEN",
			"UPDATER_API_TOKEN is shorter than 16 characters: use a long random string, like the output of `openssl rand -hex 32`"},
		{"short API token from a file", env{"UPDATER_API_TOKEN_FILE": short}, "UPDATER_API_TOKEN_FILE",
			`UPDATER_API_TOKEN_FILE="` + short + `": is shorter than 16 characters: use a long random string, like the output of ` + "`openssl rand -hex 32`"},
		{"webhook secret with a space", env{"UPDATER_WEBHOOK_SECRET": "0123456789 s3cr3t"}, "UPDATER_WEBHOOK_SECRET",
			"UPDATER_WEBHOOK_SECRET contains whitespace: use a long random string, like the output of `openssl rand -hex 32`"},
		{"secret value and file", env{"UPDATER_WEBHOOK_SECRET": webhookSecret, "UPDATER_WEBHOOK_SECRET_FILE": "/run/secrets/hook"}, "UPDATER_WEBHOOK_SECRET_FILE",
			`UPDATER_WEBHOOK_SECRET_FILE="/run/secrets/hook": is set together with UPDATER_WEBHOOK_SECRET: set one or the other`},
		{"one secret for both", env{"UPDATER_API_TOKEN": apiToken, "UPDATER_WEBHOOK_SECRET": apiToken}, "UPDATER_WEBHOOK_SECRET",
			"UPDATER_WEBHOOK_SECRET is the same as UPDATER_API_TOKEN: use a different secret, since the registry that holds the webhook secret must not get to approve or start deploys"},
		{"a source's secret is the read token", env{"UPDATER_API_TOKEN": apiToken, "UPDATER_API_READ_TOKEN": webhookSecret,
			"UPDATER_WEBHOOK_SECRET_DOCKERHUB": webhookSecret}, "UPDATER_WEBHOOK_SECRET_DOCKERHUB",
			"UPDATER_WEBHOOK_SECRET_DOCKERHUB is the same as UPDATER_API_READ_TOKEN: use a different secret, since the registry that holds the webhook secret must not get to approve or start deploys"},
		{"read token without the API token", env{"UPDATER_API_READ_TOKEN": webhookSecret}, "UPDATER_API_READ_TOKEN",
			"UPDATER_API_READ_TOKEN is set without UPDATER_API_TOKEN: set UPDATER_API_TOKEN (or UPDATER_API_TOKEN_FILE) to turn the API on"},
		{"read token is the API token", env{"UPDATER_API_TOKEN": apiToken, "UPDATER_API_READ_TOKEN": apiToken}, "UPDATER_API_READ_TOKEN",
			"UPDATER_API_READ_TOKEN is the same as UPDATER_API_TOKEN: the read-only token must differ, or it approves deploys too"},
		{"approval timeout too short", env{"UPDATER_APPROVAL_TIMEOUT": "30s"}, "UPDATER_APPROVAL_TIMEOUT",
			`UPDATER_APPROVAL_TIMEOUT="30s": out of range: use a Go duration between 1m and 720h, like "24h" or "72h"`},
		{"approval timeout in days", env{"UPDATER_APPROVAL_TIMEOUT": "2d"}, "UPDATER_APPROVAL_TIMEOUT",
			`UPDATER_APPROVAL_TIMEOUT="2d": not a duration: use a Go duration between 1m and 720h, like "24h" or "72h"`},
		{"URL without the API token", env{"UPDATER_URL": "http://127.0.0.1:8080"}, "UPDATER_URL",
			`UPDATER_URL="http://127.0.0.1:8080/": is set without UPDATER_API_TOKEN: the running updater's API takes its token (set UPDATER_API_TOKEN or UPDATER_API_TOKEN_FILE)`},
		{"URL without a scheme", env{"UPDATER_URL": "127.0.0.1:8080", "UPDATER_API_TOKEN": apiToken}, "UPDATER_URL",
			`UPDATER_URL="127.0.0.1:8080": not an http(s) URL: use the running updater's address, like "http://127.0.0.1:8080"`},
		{"typo", env{"UPDATER_API_TOKN": apiToken}, "UPDATER_API_TOKN",
			"UPDATER_API_TOKN is not a known setting; did you mean UPDATER_API_TOKEN?"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.env.load()
			errs := errorsOf(t, err)
			if len(errs) != 1 || errs[0].Var != tt.wantVar {
				t.Fatalf("got %v, want one error about %s", err, tt.wantVar)
			}
			if err.Error() != tt.want {
				t.Errorf("got  %s\nwant %s", err, tt.want)
			}
			for _, s := range []string{"s3cr3t", apiToken, webhookSecret} {
				if strings.Contains(err.Error(), s) {
					t.Errorf("message shows a secret (%q): %s", s, err)
				}
			}
		})
	}
}

func TestLongestInterval(t *testing.T) {
	monday := time.Date(2026, 3, 2, 12, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		schedule string
		want     time.Duration
	}{
		{"@every 1m", time.Minute},
		{"@every 1h", time.Hour},
		{"*/5 * * * *", 5 * time.Minute},
		{"@hourly", time.Hour},
		// Weekdays at 9: the weekend is the longest wait.
		{"0 9 * * 1-5", 72 * time.Hour},
		{"CRON_TZ=Europe/Paris 0 3 * * *", 24 * time.Hour},
	} {
		c, err := env{"UPDATER_SCHEDULE": tt.schedule}.load()
		if err != nil {
			t.Fatal(err)
		}
		if got := c.LongestInterval(monday); got != tt.want {
			t.Errorf("%q: %s, want %s", tt.schedule, got, tt.want)
		}
	}
}

// The webhook and URL-style notifiers: each secret from its variable or
// its _FILE twin; URLs split on commas, spaces and newlines; no bad value
// shown in an error, since each carries a token.
func TestOutgoingNotifySettings(t *testing.T) {
	const hook = "https://hooks.example.com/updater/t0k3n-s3cr3t"
	const sig = "0123456789abcdef-notify-s3cr3t"
	urls := "discord://t0k3n@123456 teams://g@t/a/o?host=x.webhook.office.com,\nntfy://ntfy.example.com/topic"
	c, err := env{"UPDATER_NOTIFY_WEBHOOK_URL": hook, "UPDATER_NOTIFY_WEBHOOK_SECRET_FILE": secretFile(t, sig+"\n"),
		"UPDATER_NOTIFY_URLS_FILE": secretFile(t, urls+"\n")}.load()
	if err != nil {
		t.Fatal(err)
	}
	want := Notify{WebhookURL: hook, WebhookSecret: sig,
		URLs: []string{"discord://t0k3n@123456", "teams://g@t/a/o?host=x.webhook.office.com", "ntfy://ntfy.example.com/topic"}}
	if !reflect.DeepEqual(c.Notify, want) {
		t.Errorf("got %+v\nwant %+v", c.Notify, want)
	}
	if c, err := (env{"UPDATER_NOTIFY_WEBHOOK_URL_FILE": secretFile(t, hook+"\n")}).load(); err != nil || c.Notify.WebhookURL != hook {
		t.Errorf("URL from a file: %+v, %v", c.Notify, err)
	}

	for _, tt := range []struct {
		name string
		env  env
		want string
	}{
		{"secret without URL", env{"UPDATER_NOTIFY_WEBHOOK_SECRET": sig},
			"UPDATER_NOTIFY_WEBHOOK_SECRET is set without UPDATER_NOTIFY_WEBHOOK_URL: it signs the posts to that URL; set the URL (or UPDATER_NOTIFY_WEBHOOK_URL_FILE) or unset the secret"},
		{"short secret", env{"UPDATER_NOTIFY_WEBHOOK_URL": hook, "UPDATER_NOTIFY_WEBHOOK_SECRET": "s3cr3t"},
			"UPDATER_NOTIFY_WEBHOOK_SECRET is shorter than 16 characters: use a random secret, like the output of `openssl rand -hex 32`"},
		{"URL not http", env{"UPDATER_NOTIFY_WEBHOOK_URL": "ftp://t0k3n-s3cr3t@example.com/x"},
			"UPDATER_NOTIFY_WEBHOOK_URL is not an http(s) URL: use the URL of the endpoint that takes the posts, like https://hooks.example.com/updater"},
		{"notify URL without a scheme", env{"UPDATER_NOTIFY_URLS": "ntfy://ntfy.sh/a t0k3n-s3cr3t@discord"},
			`UPDATER_NOTIFY_URLS has an entry (number 2) that is not a URL with a scheme: use shoutrrr URLs separated by commas or spaces, like "discord://token@id ntfy://ntfy.sh/topic"`},
		{"only separators", env{"UPDATER_NOTIFY_URLS": ", ,"},
			`UPDATER_NOTIFY_URLS holds no URL: use shoutrrr URLs separated by commas or spaces, like "discord://token@id ntfy://ntfy.sh/topic"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.env.load()
			if errs := errorsOf(t, err); len(errs) != 1 || err.Error() != tt.want {
				t.Errorf("got  %v\nwant %s", err, tt.want)
			}
			if strings.Contains(err.Error(), "s3cr3t") {
				t.Errorf("message shows a secret: %s", err)
			}
		})
	}
}
