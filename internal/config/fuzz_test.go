package config

import (
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/robfig/cron/v3"
)

// FuzzLoad feeds arbitrary environments to Load: lines of NAME=value
// (any name, known or not), and one value of any bytes, newlines
// included, for the setting Names()[which]. A NAME_FILE setting names a
// file holding its value, as Docker secrets do. Whatever the input, Load
// returns either a Config within every documented bound, which Load
// accepts again when written back as an environment, or only *Error
// values and a zero Config; an error never shows a secret.
func FuzzLoad(f *testing.F) {
	f.Add("", uint8(0), "")
	f.Add("UPDATER_SCHEDULE=*/5 * * * *\nUPDATER_DEPLOY_TIMEOUT=1h30m\nUPDATER_LOG_LEVEL=debug", uint8(0), "")
	f.Add("SLACK_TOKEN="+slackToken+"\nSLACK_CHANNEL=#deploys\nROLLBAR_TOKEN="+rollbarToken, uint8(0), "")
	f.Add("UPDATER_API_TOKEN=0123456789abcdef0123\nUPDATER_WEBHOOK_SECRET=fedcba9876543210fedc", uint8(0), "")
	f.Add("UPDATER_PRUNE=after-deploy\nUPDATER_PRUNE_KEEP=3", uint8(0), "")
	f.Add("UPDATER_INSECURE_REGISTRIES=registry.lan:5000, [fd00::1]:5000", uint8(0), "")
	f.Add("updater_dry_run=true\nUPDATER_SCHEDUEL=@hourly", uint8(0), "")
	f.Fuzz(func(t *testing.T, lines string, which uint8, value string) {
		names := Names()
		e := env{}
		for _, line := range strings.Split(lines, "\n") {
			if k, v, ok := strings.Cut(line, "="); ok {
				e[k] = v
			}
		}
		e[names[int(which)%len(names)]] = value
		// What a NAME_FILE setting holds is what its file holds.
		files := map[string]string{}
		for k, v := range e {
			if base, ok := strings.CutSuffix(k, "_FILE"); ok && secret(base) && strings.TrimSpace(v) != "" {
				p := filepath.Join(t.TempDir(), "secret")
				if err := os.WriteFile(p, []byte(v), 0o600); err != nil {
					t.Fatal(err)
				}
				files[k], e[k] = v, p
			}
		}

		c, err := e.load()
		if err != nil {
			checkRefusal(t, e, files, c, err)
			return
		}
		checkBounds(t, e, c)
		again, err := render(t, c).load()
		if err != nil || !reflect.DeepEqual(again, c) {
			t.Fatalf("accepted %+v, but not when written back: %+v, %v", c, again, err)
		}
	})
}

// checkRefusal: a refusal is a zero Config and only *Error values, and
// none of them shows a secret.
func checkRefusal(t *testing.T, e env, files map[string]string, c Config, err error) {
	t.Helper()
	if !reflect.DeepEqual(c, Config{}) {
		t.Fatalf("Load returned %+v with its error", c)
	}
	joined, ok := err.(interface{ Unwrap() []error })
	if !ok || len(joined.Unwrap()) == 0 {
		t.Fatalf("error %v is not a join", err)
	}
	for _, e := range joined.Unwrap() {
		var ce *Error
		if !errors.As(e, &ce) || ce.Var == "" || ce.Reason == "" {
			t.Fatalf("error %q (%T) is not a complete *Error", e, e)
		}
	}
	msg := err.Error()
	for _, name := range Names() {
		base := strings.TrimSuffix(name, "_FILE")
		if !secret(base) {
			continue
		}
		v := strings.TrimSpace(e[name])
		if name != base {
			v = strings.TrimSpace(files[name])
		}
		// A short secret could be in the message by coincidence, and so
		// could one that is there again without the secret set.
		if len(v) < 8 || !strings.Contains(msg, v) {
			continue
		}
		without := env{}
		for k, x := range e {
			if k != name {
				without[k] = x
			}
		}
		if _, err := without.load(); err == nil || !strings.Contains(err.Error(), v) {
			t.Fatalf("the error shows the value of %s: %v", name, msg)
		}
	}
}

// checkBounds: an accepted Config is within every bound the settings
// document, and no variable in the settings' namespaces went unread.
func checkBounds(t *testing.T, e env, c Config) {
	t.Helper()
	fail := func(what string) { t.Fatalf("accepted %s: %+v from %q", what, c, e) }
	known := Names()
	for k := range e {
		if slices.ContainsFunc(prefixes, func(p string) bool { return strings.HasPrefix(strings.ToUpper(k), p) }) && !slices.Contains(known, k) {
			fail("the unknown variable " + strconv.Quote(k))
		}
	}
	if _, err := cron.ParseStandard(c.Schedule); err != nil {
		fail("a schedule cron does not take")
	}
	in := func(d, lo, hi time.Duration) bool { return lo <= d && d <= hi }
	switch {
	case c.Label == "" || strings.ContainsFunc(c.Label, unicode.IsSpace) || strings.Contains(c.Label, "="):
		fail("a label key no service can carry")
	case strings.ContainsFunc(c.Stack, unicode.IsSpace):
		fail("a stack name with whitespace")
	case !in(c.DeployTimeout, 10*time.Second, 24*time.Hour), !in(c.RegistryTimeout, time.Second, 10*time.Minute),
		!in(c.WatchInterval, 100*time.Millisecond, time.Minute), !in(c.LeaseTTL, 3*time.Second, 10*time.Minute),
		!in(c.DockerTimeout, 5*time.Second, 10*time.Minute),
		!in(c.ApprovalTimeout, time.Minute, 30*24*time.Hour):
		fail("a duration out of its range")
	case c.RegistryConcurrency < 1 || c.RegistryConcurrency > 64, c.DeployConcurrency < 1 || c.DeployConcurrency > 64,
		c.Prune.Keep < 0 || c.Prune.Keep > 20:
		fail("a number out of its range")
	case c.LogFormat != "json" && c.LogFormat != "text":
		fail("a log format")
	case !slices.Contains([]slog.Level{slog.LevelDebug, slog.LevelInfo, slog.LevelWarn, slog.LevelError}, c.LogLevel):
		fail("a log level")
	case !(c.Prune.AfterDeploy || c.Prune.Keep == 1 && c.Prune.Image == ""):
		fail("prune settings without pruning")
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		fail("an address to listen on")
	}
	for _, r := range c.InsecureRegistries {
		if _, port, err := net.SplitHostPort(r); err != nil || port == "" || r != strings.ToLower(r) || strings.ContainsAny(r, "/, \t") {
			fail("an insecure registry that is not a lower-case host:port")
		}
	}
	for _, tok := range []string{c.APIToken, c.WebhookSecret} {
		if tok != "" && (len(tok) < minTokenLen || strings.ContainsFunc(tok, unicode.IsSpace)) {
			fail("a short or spaced token")
		}
	}
	if c.APIToken != "" && c.APIToken == c.WebhookSecret {
		fail("the API token as the webhook secret")
	}
	s := c.Slack
	switch {
	case s.Token != "" && (!strings.HasPrefix(s.Token, "xox") || s.Channel == "" || s.WebhookURL != ""):
		fail("a Slack token without a channel, or with a webhook")
	case s.Token == "" && s.Channel != "":
		fail("a Slack channel without a token")
	case s.AppToken != "" && (!strings.HasPrefix(s.AppToken, "xapp-") || s.Token == "" || len(s.Approvers) == 0):
		fail("a Slack app token without its bot token or approvers")
	case len(s.Approvers) > 0 && s.AppToken == "":
		fail("Slack approvers without an app token")
	case !strings.HasSuffix(s.APIURL, "/") || !strings.HasSuffix(c.Rollbar.Endpoint, "/"):
		fail("an API base without its trailing /")
	case len(c.Rollbar.Environment) > 255:
		fail("a Rollbar environment longer than Rollbar takes")
	}
}

// render writes c back as the environment that says it, leaving out
// what is the default.
func render(t *testing.T, c Config) env {
	t.Helper()
	d, e := defaults(), env{}
	put := func(name string, differs bool, v string) {
		if differs {
			e[name] = v
		}
	}
	put("UPDATER_SCHEDULE", c.Schedule != d.Schedule, c.Schedule)
	put("UPDATER_LABEL", c.Label != d.Label, c.Label)
	put("UPDATER_STACK", c.Stack != d.Stack, c.Stack)
	put("UPDATER_DEPLOY_TIMEOUT", c.DeployTimeout != d.DeployTimeout, c.DeployTimeout.String())
	put("UPDATER_DRY_RUN", c.DryRun != d.DryRun, strconv.FormatBool(c.DryRun))
	put("UPDATER_LOG_FORMAT", c.LogFormat != d.LogFormat, c.LogFormat)
	put("UPDATER_LOG_LEVEL", c.LogLevel != d.LogLevel, c.LogLevel.String())
	put("UPDATER_REGISTRY_CONCURRENCY", c.RegistryConcurrency != d.RegistryConcurrency, strconv.Itoa(c.RegistryConcurrency))
	put("UPDATER_DEPLOY_CONCURRENCY", c.DeployConcurrency != d.DeployConcurrency, strconv.Itoa(c.DeployConcurrency))
	put("UPDATER_REGISTRY_TIMEOUT", c.RegistryTimeout != d.RegistryTimeout, c.RegistryTimeout.String())
	put("UPDATER_INSECURE_REGISTRIES", len(c.InsecureRegistries) > 0, strings.Join(c.InsecureRegistries, ","))
	put("UPDATER_WATCH_INTERVAL", c.WatchInterval != d.WatchInterval, c.WatchInterval.String())
	put("UPDATER_DOCKER_TIMEOUT", c.DockerTimeout != d.DockerTimeout, c.DockerTimeout.String())
	put("UPDATER_LEASE_TTL", c.LeaseTTL != d.LeaseTTL, c.LeaseTTL.String())
	put("UPDATER_APPROVAL_TIMEOUT", c.ApprovalTimeout != d.ApprovalTimeout, c.ApprovalTimeout.String())
	put("UPDATER_LISTEN", c.Listen != d.Listen, c.Listen)
	put("UPDATER_API_TOKEN", c.APIToken != d.APIToken, c.APIToken)
	put("UPDATER_WEBHOOK_SECRET", c.WebhookSecret != d.WebhookSecret, c.WebhookSecret)
	put("UPDATER_PRUNE", c.Prune.AfterDeploy != d.Prune.AfterDeploy, "after-deploy")
	put("UPDATER_PRUNE_KEEP", c.Prune.Keep != d.Prune.Keep, strconv.Itoa(c.Prune.Keep))
	put("UPDATER_PRUNE_IMAGE", c.Prune.Image != d.Prune.Image, c.Prune.Image)
	put("UPDATER_PROBE_IMAGE", c.ProbeImage != d.ProbeImage, c.ProbeImage)
	put("SLACK_TOKEN", c.Slack.Token != d.Slack.Token, c.Slack.Token)
	put("SLACK_CHANNEL", c.Slack.Channel != d.Slack.Channel, c.Slack.Channel)
	put("SLACK_WEBHOOK_URL", c.Slack.WebhookURL != d.Slack.WebhookURL, c.Slack.WebhookURL)
	put("SLACK_API_URL", c.Slack.APIURL != d.Slack.APIURL, c.Slack.APIURL)
	put("SLACK_APP_TOKEN", c.Slack.AppToken != d.Slack.AppToken, c.Slack.AppToken)
	put("SLACK_APPROVERS", len(c.Slack.Approvers) > 0, strings.Join(c.Slack.Approvers, ","))
	put("UPDATER_HOOK_IMAGES", len(c.HookImages) > 0, strings.Join(c.HookImages, ","))
	put("UPDATER_HOOK_MOUNT_ROOTS", len(c.HookMountRoots) > 0, strings.Join(c.HookMountRoots, ","))
	put("ROLLBAR_TOKEN", c.Rollbar.Token != d.Rollbar.Token, c.Rollbar.Token)
	put("ROLLBAR_ENVIRONMENT", c.Rollbar.Environment != d.Rollbar.Environment, c.Rollbar.Environment)
	put("ROLLBAR_ENDPOINT", c.Rollbar.Endpoint != d.Rollbar.Endpoint, c.Rollbar.Endpoint)
	return e
}
