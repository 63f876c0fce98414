// Package config is the only package that knows environment-variable names.
package config

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/updater-dev/updater/internal/deploy"
	"github.com/updater-dev/updater/internal/imageref"
	"github.com/updater-dev/updater/internal/schedule"
	"github.com/updater-dev/updater/internal/window"
)

// Config is the whole of updater's configuration. The zero value is not
// useful; get one from Load.
type Config struct {
	Schedule            string        // UPDATER_SCHEDULE: when to poll registries (cron or descriptor)
	Label               string        // UPDATER_LABEL: the label key a service carries to opt in
	Stack               string        // UPDATER_STACK: "" watches every stack
	DeployTimeout       time.Duration // UPDATER_DEPLOY_TIMEOUT: how long one rollout may take
	DryRun              bool          // UPDATER_DRY_RUN: look and report, never update
	LogFormat           string        // UPDATER_LOG_FORMAT: "json" or "text"
	LogLevel            slog.Level    // UPDATER_LOG_LEVEL
	RegistryConcurrency int           // UPDATER_REGISTRY_CONCURRENCY: digest lookups in flight at once
	DeployConcurrency   int           // UPDATER_DEPLOY_CONCURRENCY: deploys (runs) in flight at once; 1 deploys one after another
	RegistryTimeout     time.Duration // UPDATER_REGISTRY_TIMEOUT: one digest lookup, retries included
	InsecureRegistries  []string      // UPDATER_INSECURE_REGISTRIES: registries (lower-case host:port) also reached over plain HTTP; none by default
	SourceHosts         []string      // UPDATER_SOURCE_HOSTS: hosts (lower-case host[:port]) besides github.com and gitlab.com whose repositories get commit links
	WatchInterval       time.Duration // UPDATER_WATCH_INTERVAL: how often a rollout is inspected
	DockerTimeout       time.Duration // UPDATER_DOCKER_TIMEOUT: how long one Docker call may go unanswered
	LeaseTTL            time.Duration // UPDATER_LEASE_TTL: how long a dead updater's lease blocks another
	ApprovalTimeout     time.Duration // UPDATER_APPROVAL_TIMEOUT: how long a deploy waits for a person's approval

	// What hook labels may ask of the Docker daemon beyond the service's
	// own repository and its stack's volumes: the people who write stack
	// files may have less power than the socket the updater holds.
	HookMountRoots []string // UPDATER_HOOK_MOUNT_ROOTS: host path prefixes hook jobs may bind, and other volumes by name; none by default
	HookImages     []string // UPDATER_HOOK_IMAGES: repositories or registry hosts hook images may come from; none by default
	// Policy holds deploys of every service outside its windows
	// (UPDATER_WINDOWS) and inside its freezes (UPDATER_FREEZE); a
	// service's updater.window replaces the windows, updater.freeze adds.
	Policy         window.Policy
	ReportHookLogs bool // UPDATER_REPORT_HOOK_LOGS: hook log tails go to Slack and Rollbar too; the log keeps them always

	// The HTTP server: health, metrics, registry webhooks, the API and the
	// status page.
	Listen        string // UPDATER_LISTEN: host:port
	APIToken      string // UPDATER_API_TOKEN or UPDATER_API_TOKEN_FILE: the API and the status page; "" turns both off
	WebhookSecret string // UPDATER_WEBHOOK_SECRET or UPDATER_WEBHOOK_SECRET_FILE: registry webhooks; "" turns them off
	// APIReadToken (UPDATER_API_READ_TOKEN or _FILE) reads the API and the
	// status page, and changes nothing; needs UPDATER_API_TOKEN.
	APIReadToken string
	// Per-source webhook secrets (UPDATER_WEBHOOK_SECRET_GITHUB, _DOCKERHUB,
	// _DISTRIBUTION, or their _FILE twins): each overrides WebhookSecret for
	// its source, so whoever sees one registry's secret can't pose as another.
	WebhookSecretGitHub, WebhookSecretDockerHub, WebhookSecretDistribution string
	// URL (UPDATER_URL), when set, makes the CLI's check, deploy, approve
	// and reject ask the running updater's API there, with APIToken,
	// instead of acting on Docker themselves. A base URL, ending in "/".
	URL string

	Prune Prune // UPDATER_PRUNE*: removing the images deploys made unused, on every node
	// ProbeImage (UPDATER_PROBE_IMAGE) is the image the probe job of a
	// service with updater.probe.url runs on that service's network; "" is
	// the updater's own.
	ProbeImage string
	// PrometheusURL (UPDATER_PROMETHEUS_URL) is the Prometheus that judges
	// canaries (updater.canary), a base URL ending in "/"; "": none, and a
	// service labelled with a canary fails its deploy. PrometheusToken
	// (UPDATER_PROMETHEUS_TOKEN or _FILE) is sent as its bearer token.
	PrometheusURL, PrometheusToken string

	Slack   Slack   // SLACK_*: deploy messages, off unless a token or webhook is set
	Rollbar Rollbar // ROLLBAR_*: deploy tracking and the updater's own errors, off unless a token is set
	Notify  Notify  // UPDATER_NOTIFY_*: a webhook of the team's own, and URL-style notifiers
}

// Notify is where deploy events go besides Slack and Rollbar.
type Notify struct {
	WebhookURL    string   // UPDATER_NOTIFY_WEBHOOK_URL or _FILE: each event posted as JSON (schema updater.event/v1)
	WebhookSecret string   // UPDATER_NOTIFY_WEBHOOK_SECRET or _FILE: signs each post (HMAC-SHA256)
	URLs          []string // UPDATER_NOTIFY_URLS or _FILE: shoutrrr URLs (discord://, teams://, ntfy://, gotify://, smtp://…)
}

// Slack is where deploy messages go: a bot token and a channel (one
// message per deploy, edited as it moves), or an incoming webhook (a
// message at the start and one at the end). At most one of the two.
type Slack struct {
	Token      string // SLACK_TOKEN or SLACK_TOKEN_FILE: a bot token, xoxb-…
	Channel    string // SLACK_CHANNEL: an ID (C0123…) or a name (#deploys)
	WebhookURL string // SLACK_WEBHOOK_URL or SLACK_WEBHOOK_URL_FILE
	APIURL     string // SLACK_API_URL: the Web API base, ending in "/"
	// AppToken (SLACK_APP_TOKEN or _FILE), an app-level token (xapp-…),
	// turns on Socket Mode: Approve, Reject and Roll back buttons, pressed
	// over a WebSocket the updater opens, so it needs no inbound port.
	AppToken string
	// Approvers (SLACK_APPROVERS) are the Slack user IDs that may press
	// them; anyone else is refused.
	Approvers []string
}

// Prune is removing, after each successful deploy, the images it made
// unused, on every node of the swarm.
type Prune struct {
	AfterDeploy bool   // UPDATER_PRUNE: "off" (the default) or "after-deploy"
	Keep        int    // UPDATER_PRUNE_KEEP: versions before the current one kept, for a rollback without a pull
	Image       string // UPDATER_PRUNE_IMAGE: the image the prune job runs on every node; "" is the updater's own
}

// Rollbar is the Rollbar project deploys and errors are reported to.
type Rollbar struct {
	Token       string // ROLLBAR_TOKEN or ROLLBAR_TOKEN_FILE: a post_server_item access token
	Environment string // ROLLBAR_ENVIRONMENT
	Endpoint    string // ROLLBAR_ENDPOINT: the API base, ending in "/"
}

// Error is one bad setting. Value is empty when the setting's value is not
// shown: an unknown UPDATER_* variable may hold a secret meant for elsewhere.
type Error struct{ Var, Value, Reason string }

func (e *Error) Error() string {
	if e.Value == "" {
		return e.Var + " " + e.Reason
	}
	return fmt.Sprintf("%s=%q: %s", e.Var, e.Value, e.Reason)
}

// prefixes are the namespaces of updater's settings: a variable in one
// of them that is not a setting is a typo, since nothing else in the
// updater's container reads them.
var prefixes = []string{"UPDATER_", "SLACK_", "ROLLBAR_"}

// setting ties one variable to the Config field it fills. set sees only
// non-empty, trimmed values: unset and empty both mean "keep the default".
type setting struct {
	name string
	set  func(c *Config, v string) error
}

// secret reports whether a setting holds a secret. Its value may instead
// be read from the file NAME_FILE names (the Docker secrets convention),
// and it never appears in an error. The list is explicit so that no other
// variable grows a _FILE twin by accident.
func secret(name string) bool {
	switch name {
	case "SLACK_TOKEN", "SLACK_APP_TOKEN", "SLACK_WEBHOOK_URL", "ROLLBAR_TOKEN", "UPDATER_API_TOKEN", "UPDATER_WEBHOOK_SECRET",
		"UPDATER_API_READ_TOKEN", "UPDATER_WEBHOOK_SECRET_GITHUB", "UPDATER_WEBHOOK_SECRET_DOCKERHUB", "UPDATER_WEBHOOK_SECRET_DISTRIBUTION",
		"UPDATER_NOTIFY_WEBHOOK_URL", "UPDATER_NOTIFY_WEBHOOK_SECRET", "UPDATER_NOTIFY_URLS", "UPDATER_PROMETHEUS_TOKEN":
		return true
	}
	return false
}

// settings is a func rather than a package var so nothing can mutate the table.
func settings() []setting {
	return []setting{
		{"UPDATER_SCHEDULE", func(c *Config, v string) (err error) {
			c.Schedule, err = parseSchedule(v)
			return err
		}},
		{"UPDATER_LABEL", func(c *Config, v string) (err error) {
			c.Label, err = parseLabel(v)
			return err
		}},
		{"UPDATER_STACK", func(c *Config, v string) error {
			// A stack name with whitespace can never match, so it is a typo,
			// not a filter that quietly selects nothing.
			if strings.ContainsFunc(v, unicode.IsSpace) {
				return errors.New(`contains whitespace: use a stack name as given to "docker stack deploy", or leave unset for all stacks`)
			}
			c.Stack = v
			return nil
		}},
		{"UPDATER_DEPLOY_TIMEOUT", func(c *Config, v string) (err error) {
			c.DeployTimeout, err = parseDuration(v, 10*time.Second, 24*time.Hour, `"10m" or "1h30m"`)
			return err
		}},
		{"UPDATER_DRY_RUN", func(c *Config, v string) error {
			b, err := strconv.ParseBool(v)
			if err != nil {
				return errors.New(`not a boolean: use "true" or "false"`)
			}
			c.DryRun = b
			return nil
		}},
		{"UPDATER_LOG_FORMAT", func(c *Config, v string) error {
			switch f := strings.ToLower(v); f {
			case "json", "text":
				c.LogFormat = f
				return nil
			}
			return errors.New(`unknown log format: use "json" or "text"`)
		}},
		{"UPDATER_LOG_LEVEL", func(c *Config, v string) error {
			// Not slog.Level.UnmarshalText: it also takes "info+2" and the like,
			// which we would then have to document and support.
			switch strings.ToLower(v) {
			case "debug":
				c.LogLevel = slog.LevelDebug
			case "info":
				c.LogLevel = slog.LevelInfo
			case "warn":
				c.LogLevel = slog.LevelWarn
			case "error":
				c.LogLevel = slog.LevelError
			default:
				return errors.New(`unknown log level: use "debug", "info", "warn" or "error"`)
			}
			return nil
		}},
		{"UPDATER_REGISTRY_CONCURRENCY", func(c *Config, v string) (err error) {
			c.RegistryConcurrency, err = parseInt(v, 1, 64, `"8"`)
			return err
		}},
		{"UPDATER_DEPLOY_CONCURRENCY", func(c *Config, v string) (err error) {
			c.DeployConcurrency, err = parseInt(v, 1, 64, `"4" (1 deploys one after another, in the order planned)`)
			return err
		}},
		{"UPDATER_REGISTRY_TIMEOUT", func(c *Config, v string) (err error) {
			c.RegistryTimeout, err = parseDuration(v, time.Second, 10*time.Minute, `"30s" or "2m"`)
			return err
		}},
		{"UPDATER_HOOK_MOUNT_ROOTS", func(c *Config, v string) (err error) {
			c.HookMountRoots, err = parseMountRoots(v)
			return err
		}},
		{"UPDATER_WINDOWS", func(c *Config, v string) (err error) {
			c.Policy.Windows, err = window.ParseWindows("UPDATER_WINDOWS", v)
			return err
		}},
		{"UPDATER_FREEZE", func(c *Config, v string) (err error) {
			c.Policy.Freezes, err = window.ParseFreezes("UPDATER_FREEZE", v)
			return err
		}},
		{"UPDATER_HOOK_IMAGES", func(c *Config, v string) (err error) {
			c.HookImages, err = parseHookImages(v)
			return err
		}},
		{"UPDATER_REPORT_HOOK_LOGS", func(c *Config, v string) error {
			b, err := strconv.ParseBool(v)
			if err != nil {
				return errors.New(`not a boolean: use "true" or "false"`)
			}
			c.ReportHookLogs = b
			return nil
		}},
		{"UPDATER_SOURCE_HOSTS", func(c *Config, v string) (err error) {
			c.SourceHosts, err = parseSourceHosts(v)
			return err
		}},
		{"UPDATER_INSECURE_REGISTRIES", func(c *Config, v string) (err error) {
			c.InsecureRegistries, err = parseInsecureRegistries(v)
			return err
		}},
		{"UPDATER_WATCH_INTERVAL", func(c *Config, v string) (err error) {
			c.WatchInterval, err = parseDuration(v, 100*time.Millisecond, time.Minute, `"1s" or "500ms"`)
			return err
		}},
		{"UPDATER_DOCKER_TIMEOUT", func(c *Config, v string) (err error) {
			c.DockerTimeout, err = parseDuration(v, 5*time.Second, 10*time.Minute, `"30s" or "2m"`)
			return err
		}},
		{"UPDATER_LEASE_TTL", func(c *Config, v string) (err error) {
			c.LeaseTTL, err = parseDuration(v, 3*time.Second, 10*time.Minute, `"30s" or "1m"`)
			return err
		}},
		{"UPDATER_APPROVAL_TIMEOUT", func(c *Config, v string) (err error) {
			c.ApprovalTimeout, err = parseDuration(v, time.Minute, 30*24*time.Hour, `"24h" or "72h"`)
			return err
		}},
		{"UPDATER_LISTEN", func(c *Config, v string) (err error) {
			c.Listen, err = parseListen(v)
			return err
		}},
		{"UPDATER_URL", func(c *Config, v string) (err error) {
			c.URL, err = parseURL(v, true, `the running updater's address, like "http://127.0.0.1:8080"`)
			return err
		}},
		{"UPDATER_API_TOKEN", func(c *Config, v string) (err error) {
			c.APIToken, err = parseToken(v)
			return err
		}},
		{"UPDATER_WEBHOOK_SECRET", func(c *Config, v string) (err error) {
			c.WebhookSecret, err = parseToken(v)
			return err
		}},
		{"UPDATER_API_READ_TOKEN", func(c *Config, v string) (err error) {
			c.APIReadToken, err = parseToken(v)
			return err
		}},
		{"UPDATER_WEBHOOK_SECRET_GITHUB", func(c *Config, v string) (err error) {
			c.WebhookSecretGitHub, err = parseToken(v)
			return err
		}},
		{"UPDATER_WEBHOOK_SECRET_DOCKERHUB", func(c *Config, v string) (err error) {
			c.WebhookSecretDockerHub, err = parseToken(v)
			return err
		}},
		{"UPDATER_WEBHOOK_SECRET_DISTRIBUTION", func(c *Config, v string) (err error) {
			c.WebhookSecretDistribution, err = parseToken(v)
			return err
		}},
		{"UPDATER_PRUNE", func(c *Config, v string) error {
			switch strings.ToLower(v) {
			case "off":
				c.Prune.AfterDeploy = false
			case "after-deploy":
				c.Prune.AfterDeploy = true
			default:
				return errors.New(`unknown prune mode: use "off" or "after-deploy"`)
			}
			return nil
		}},
		{"UPDATER_PRUNE_KEEP", func(c *Config, v string) (err error) {
			c.Prune.Keep, err = parseInt(v, 0, 20, `"1" (0 keeps only the current version: a rollback then pulls)`)
			return err
		}},
		{"UPDATER_PRUNE_IMAGE", func(c *Config, v string) error {
			if _, err := imageref.Parse(v); err != nil {
				return errors.New("not an image reference: use the updater's image as the nodes pull it, like ghcr.io/you/updater:1.4@sha256:…, or leave unset for the image the updater runs in")
			}
			c.Prune.Image = v
			return nil
		}},
		{"UPDATER_PROBE_IMAGE", func(c *Config, v string) error {
			if _, err := imageref.Parse(v); err != nil {
				return errors.New("not an image reference: use the updater's image as the nodes pull it, like ghcr.io/you/updater:1.4@sha256:…, or leave unset for the image the updater runs in")
			}
			c.ProbeImage = v
			return nil
		}},
		{"UPDATER_PROMETHEUS_URL", func(c *Config, v string) (err error) {
			c.PrometheusURL, err = parseURL(v, true, `the Prometheus server's base URL, like "http://prometheus:9090"`)
			return err
		}},
		{"UPDATER_PROMETHEUS_TOKEN", func(c *Config, v string) error {
			if strings.ContainsFunc(v, unicode.IsSpace) {
				return errors.New(`contains whitespace: use the bearer token alone, without "Bearer "`)
			}
			c.PrometheusToken = v
			return nil
		}},
		{"SLACK_TOKEN", func(c *Config, v string) error {
			switch {
			case strings.HasPrefix(v, "http://") || strings.HasPrefix(v, "https://"):
				return errors.New("is a URL, not a token: an incoming webhook URL goes in SLACK_WEBHOOK_URL")
			case strings.ContainsFunc(v, unicode.IsSpace):
				return errors.New("contains whitespace: use the bot token exactly as Slack shows it (xoxb-…)")
			case !strings.HasPrefix(v, "xox"):
				return errors.New("does not look like a Slack token: a bot token starts with xoxb-")
			}
			c.Slack.Token = v
			return nil
		}},
		{"SLACK_APP_TOKEN", func(c *Config, v string) error {
			switch {
			case strings.ContainsFunc(v, unicode.IsSpace):
				return errors.New("contains whitespace: use the app-level token exactly as Slack shows it (xapp-…)")
			case strings.HasPrefix(v, "xoxb-"):
				return errors.New("is a bot token: the bot token goes in SLACK_TOKEN; SLACK_APP_TOKEN is the app-level token (xapp-…, scope connections:write)")
			case !strings.HasPrefix(v, "xapp-"):
				return errors.New("does not look like an app-level token: it starts with xapp- (Basic Information, App-Level Tokens, scope connections:write)")
			}
			c.Slack.AppToken = v
			return nil
		}},
		{"SLACK_APPROVERS", func(c *Config, v string) (err error) {
			c.Slack.Approvers, err = parseSlackUsers(v)
			return err
		}},
		{"SLACK_CHANNEL", func(c *Config, v string) error {
			if strings.ContainsFunc(v, unicode.IsSpace) || strings.Contains(v, ",") {
				return errors.New("not one channel: use a channel ID like C0123456789 or a name like #deploys")
			}
			c.Slack.Channel = v
			return nil
		}},
		{"SLACK_WEBHOOK_URL", func(c *Config, v string) (err error) {
			c.Slack.WebhookURL, err = parseURL(v, false, "the incoming webhook URL Slack shows, like https://hooks.slack.com/services/T…/B…/…")
			if err != nil {
				// Read after the bare name, since the value is not shown.
				return errors.New("is " + err.Error())
			}
			return nil
		}},
		{"SLACK_API_URL", func(c *Config, v string) (err error) {
			c.Slack.APIURL, err = parseURL(v, true, `the Slack Web API base, like "https://slack.com/api/"`)
			return err
		}},
		{"ROLLBAR_TOKEN", func(c *Config, v string) error {
			if strings.ContainsFunc(v, unicode.IsSpace) {
				return errors.New("contains whitespace: use the project access token (post_server_item scope) exactly as Rollbar shows it")
			}
			c.Rollbar.Token = v
			return nil
		}},
		{"ROLLBAR_ENVIRONMENT", func(c *Config, v string) error {
			if len(v) > 255 {
				return errors.New("longer than Rollbar's 255 characters: use an environment name like \"production\"")
			}
			c.Rollbar.Environment = v
			return nil
		}},
		{"ROLLBAR_ENDPOINT", func(c *Config, v string) (err error) {
			c.Rollbar.Endpoint, err = parseURL(v, true, `the Rollbar API base, like "https://api.rollbar.com/api/1/"`)
			return err
		}},
		{"UPDATER_NOTIFY_WEBHOOK_URL", func(c *Config, v string) (err error) {
			c.Notify.WebhookURL, err = parseURL(v, false, "the URL of the endpoint that takes the posts, like https://hooks.example.com/updater")
			if err != nil {
				return errors.New("is " + err.Error()) // read after the bare name: the value is not shown
			}
			return nil
		}},
		{"UPDATER_NOTIFY_WEBHOOK_SECRET", func(c *Config, v string) error {
			if len(v) < 16 {
				return errors.New("is shorter than 16 characters: use a random secret, like the output of `openssl rand -hex 32`")
			}
			c.Notify.WebhookSecret = v
			return nil
		}},
		{"UPDATER_NOTIFY_URLS", func(c *Config, v string) (err error) {
			c.Notify.URLs, err = parseNotifyURLs(v)
			return err
		}},
	}
}

func defaults() Config {
	return Config{
		Schedule:            "@every 1m",
		Label:               "updater.enable",
		DeployTimeout:       10 * time.Minute,
		LogFormat:           "json",
		LogLevel:            slog.LevelInfo,
		RegistryConcurrency: 8,
		DeployConcurrency:   deploy.DefaultDeployConcurrency,
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
}

// Names returns the known variable names, _FILE twins included, sorted.
func Names() []string {
	var names []string
	for _, s := range settings() {
		names = append(names, s.name)
		if secret(s.name) {
			names = append(names, s.name+"_FILE")
		}
	}
	slices.Sort(names)
	return names
}

// Load reads the configuration. lookup is os.LookupEnv in production, a map in
// tests; environ is os.Environ(), used only to find unknown UPDATER_* names.
// Every problem is reported, as an errors.Join of *Error, so one restart of
// the service is enough to fix them all.
func Load(lookup func(string) (string, bool), environ []string) (Config, error) {
	c := defaults()
	var errs []error
	given := map[string]bool{}
	for _, s := range settings() {
		raw, _ := lookup(s.name)
		v, name, shown := strings.TrimSpace(raw), s.name, strings.TrimSpace(raw)
		if secret(s.name) {
			// Never the secret in an error: the file it came from, or nothing.
			shown = ""
			fv, file, err := readSecretFile(lookup, s.name, v)
			if file != "" {
				given[s.name] = true
				v, name, shown = fv, s.name+"_FILE", file
			}
			if err != nil {
				errs = append(errs, err)
				continue
			}
		}
		if v == "" {
			continue
		}
		given[s.name] = true
		if err := s.set(&c, v); err != nil {
			errs = append(errs, &Error{Var: name, Value: shown, Reason: err.Error()})
		}
	}
	errs = append(errs, c.check(given)...)
	for _, name := range unknown(environ) {
		errs = append(errs, &Error{Var: name, Reason: "is not a known setting; " + suggest(name)})
	}
	if len(errs) > 0 {
		return Config{}, errors.Join(errs...)
	}
	return c, nil
}

// readSecretFile reads NAME_FILE for the secret setting name, whose
// direct value is v. file is "" when NAME_FILE is not set.
func readSecretFile(lookup func(string) (string, bool), name, v string) (value, file string, err error) {
	raw, _ := lookup(name + "_FILE")
	file = strings.TrimSpace(raw)
	switch {
	case file == "":
		return "", "", nil
	case v != "":
		return "", file, &Error{Var: name + "_FILE", Value: file, Reason: "is set together with " + name + ": set one or the other"}
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", file, &Error{Var: name + "_FILE", Value: file, Reason: "cannot be read: " + err.Error()}
	}
	// Editors and `echo` end the file with a newline; the secret does not.
	value = strings.TrimRight(string(b), "\r\n")
	if value == "" {
		return "", file, &Error{Var: name + "_FILE", Value: file, Reason: "names an empty file: put the " + name + " value in it"}
	}
	return value, file, nil
}

// check finds settings that are each valid but make no sense together.
// given holds the settings that were set, by either spelling.
func (c Config) check(given map[string]bool) []error {
	var errs []error
	s := c.Slack
	switch {
	case given["SLACK_TOKEN"] && given["SLACK_WEBHOOK_URL"]:
		errs = append(errs, &Error{Var: "SLACK_WEBHOOK_URL", Reason: "is set together with SLACK_TOKEN: use one, or every deploy is posted twice " +
			"(the token keeps one message per deploy up to date; the webhook posts a start and an end)"})
	case given["SLACK_TOKEN"] && !given["SLACK_CHANNEL"]:
		errs = append(errs, &Error{Var: "SLACK_CHANNEL", Reason: "is not set, but SLACK_TOKEN is: name the channel for deploy messages, " +
			"by ID like C0123456789 or by name like #deploys (the bot must be a member)"})
	case given["SLACK_CHANNEL"] && !given["SLACK_TOKEN"]:
		hint := "set SLACK_TOKEN (or SLACK_TOKEN_FILE) to a bot token, or unset SLACK_CHANNEL"
		if given["SLACK_WEBHOOK_URL"] {
			hint = "an incoming webhook posts to the channel it was made for; unset SLACK_CHANNEL"
		}
		errs = append(errs, &Error{Var: "SLACK_CHANNEL", Value: s.Channel, Reason: "is set without SLACK_TOKEN: " + hint})
	}
	// The buttons act through the bot: it posts the messages they sit on
	// and answers each press in its thread.
	if given["SLACK_APP_TOKEN"] && !given["SLACK_TOKEN"] {
		errs = append(errs, &Error{Var: "SLACK_APP_TOKEN", Reason: "is set without SLACK_TOKEN: the buttons sit on the bot's messages; " +
			"set SLACK_TOKEN (or SLACK_TOKEN_FILE) to the bot token and SLACK_CHANNEL, or unset SLACK_APP_TOKEN"})
	}
	switch {
	case given["SLACK_APPROVERS"] && !given["SLACK_APP_TOKEN"]:
		errs = append(errs, &Error{Var: "SLACK_APPROVERS", Value: strings.Join(s.Approvers, ","), Reason: "is set without SLACK_APP_TOKEN: " +
			"approvers press buttons, which need Socket Mode; set SLACK_APP_TOKEN (or SLACK_APP_TOKEN_FILE), or unset SLACK_APPROVERS"})
	case given["SLACK_APP_TOKEN"] && !given["SLACK_APPROVERS"]:
		errs = append(errs, &Error{Var: "SLACK_APPROVERS", Reason: "is not set, but SLACK_APP_TOKEN is: list the Slack user IDs " +
			"that may press Approve, Reject and Roll back, like U0123ABCD,U0456EFGH (a member's profile, ⋮, Copy member ID)"})
	}
	if given["SLACK_API_URL"] && !given["SLACK_TOKEN"] {
		errs = append(errs, &Error{Var: "SLACK_API_URL", Value: s.APIURL, Reason: "is set without SLACK_TOKEN: it only redirects the bot token's requests"})
	}
	// Whoever holds a webhook secret (a registry, a CI system) must not get
	// to approve deploys, nor read the API.
	for _, hook := range []struct{ name, v string }{{"UPDATER_WEBHOOK_SECRET", c.WebhookSecret},
		{"UPDATER_WEBHOOK_SECRET_GITHUB", c.WebhookSecretGitHub}, {"UPDATER_WEBHOOK_SECRET_DOCKERHUB", c.WebhookSecretDockerHub},
		{"UPDATER_WEBHOOK_SECRET_DISTRIBUTION", c.WebhookSecretDistribution}} {
		for _, api := range []struct{ name, v string }{{"UPDATER_API_TOKEN", c.APIToken}, {"UPDATER_API_READ_TOKEN", c.APIReadToken}} {
			if hook.v != "" && hook.v == api.v {
				errs = append(errs, &Error{Var: hook.name, Reason: "is the same as " + api.name + ": use a different secret, " +
					"since the registry that holds the webhook secret must not get to approve or start deploys"})
			}
		}
	}
	if c.URL != "" && c.APIToken == "" {
		errs = append(errs, &Error{Var: "UPDATER_URL", Value: c.URL, Reason: "is set without UPDATER_API_TOKEN: the running updater's API takes its token (set UPDATER_API_TOKEN or UPDATER_API_TOKEN_FILE)"})
	}
	switch {
	case c.APIReadToken != "" && c.APIToken == "":
		errs = append(errs, &Error{Var: "UPDATER_API_READ_TOKEN", Reason: "is set without UPDATER_API_TOKEN: set UPDATER_API_TOKEN (or UPDATER_API_TOKEN_FILE) to turn the API on"})
	case c.APIReadToken != "" && c.APIReadToken == c.APIToken:
		errs = append(errs, &Error{Var: "UPDATER_API_READ_TOKEN", Reason: "is the same as UPDATER_API_TOKEN: the read-only token must differ, or it approves deploys too"})
	}
	for _, setting := range []string{"UPDATER_PRUNE_KEEP", "UPDATER_PRUNE_IMAGE"} {
		if given[setting] && !c.Prune.AfterDeploy {
			errs = append(errs, &Error{Var: setting, Reason: "is set, but UPDATER_PRUNE is not after-deploy: set UPDATER_PRUNE=after-deploy to prune, or unset " + setting})
		}
	}
	for _, name := range []string{"ROLLBAR_ENVIRONMENT", "ROLLBAR_ENDPOINT"} {
		if given[name] && !given["ROLLBAR_TOKEN"] {
			errs = append(errs, &Error{Var: name, Reason: "is set without ROLLBAR_TOKEN: set ROLLBAR_TOKEN (or ROLLBAR_TOKEN_FILE) to turn Rollbar on"})
		}
	}
	if u, err := url.Parse(c.PrometheusURL); err == nil && u.User != nil {
		// Not shown: the password is in it.
		errs = append(errs, &Error{Var: "UPDATER_PROMETHEUS_URL", Reason: "carries a user name or password: the URL is quoted in logs and reports; " +
			"put a bearer token in UPDATER_PROMETHEUS_TOKEN (or UPDATER_PROMETHEUS_TOKEN_FILE) instead"})
	}
	if given["UPDATER_PROMETHEUS_TOKEN"] && c.PrometheusURL == "" {
		errs = append(errs, &Error{Var: "UPDATER_PROMETHEUS_TOKEN", Reason: "is set without UPDATER_PROMETHEUS_URL: set the Prometheus server's URL, or unset the token"})
	}
	if given["UPDATER_NOTIFY_WEBHOOK_SECRET"] && !given["UPDATER_NOTIFY_WEBHOOK_URL"] {
		errs = append(errs, &Error{Var: "UPDATER_NOTIFY_WEBHOOK_SECRET", Reason: "is set without UPDATER_NOTIFY_WEBHOOK_URL: it signs the posts to that URL; set the URL (or UPDATER_NOTIFY_WEBHOOK_URL_FILE) or unset the secret"})
	}
	return errs
}

// slackUserID is the shape of a Slack user ID: U or W (Enterprise Grid),
// then upper-case letters and digits.
var slackUserID = regexp.MustCompile(`^[UW][A-Z0-9]{2,}$`)

// parseSlackUsers reads a comma-separated list of Slack user IDs. Names
// (@alice) are refused: they can change and be taken by someone else,
// an ID cannot.
func parseSlackUsers(v string) ([]string, error) {
	var ids []string
	for _, f := range strings.Split(v, ",") {
		f = strings.TrimSpace(f)
		switch {
		case f == "":
			continue
		case !slackUserID.MatchString(f):
			return nil, fmt.Errorf("%q is not a Slack user ID: use IDs like U0123ABCD (a member's profile, ⋮, Copy member ID), not names", f)
		case slices.Contains(ids, f):
			continue
		}
		ids = append(ids, f)
	}
	if len(ids) == 0 {
		return nil, errors.New("names no user: list Slack user IDs like U0123ABCD,U0456EFGH")
	}
	return ids, nil
}

// unknown returns the UPDATER_* names in environ that are not settings, sorted
// and without repeats. The prefix is matched in any case because the
// environment is case-sensitive: updater_dry_run=true would otherwise be
// ignored without a word.
func unknown(environ []string) []string {
	known := Names()
	var out []string
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if !slices.ContainsFunc(prefixes, func(p string) bool { return strings.HasPrefix(strings.ToUpper(name), p) }) {
			continue
		}
		if _, found := slices.BinarySearch(known, name); found {
			continue
		}
		out = append(out, name)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// suggest names the known setting closest to name, or lists them all when
// none is close enough that the guess would help more than it misleads.
func suggest(name string) string {
	const maxDistance = 3
	best, bestDist := "", maxDistance+1
	upper := strings.ToUpper(name)
	for _, k := range Names() {
		if d := distance(upper, k); d < bestDist {
			best, bestDist = k, d
		}
	}
	if best != "" {
		return "did you mean " + best + "?"
	}
	return "known settings: " + strings.Join(Names(), ", ")
}

// distance is the optimal-string-alignment (restricted Damerau-Levenshtein)
// distance, so a swapped pair of letters costs one edit, as a typist would.
func distance(a, b string) int {
	s, t := []rune(a), []rune(b)
	// Three rows suffice: a transposition looks back two rows.
	prev2 := make([]int, len(t)+1)
	prev := make([]int, len(t)+1)
	cur := make([]int, len(t)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(s); i++ {
		cur[0] = i
		for j := 1; j <= len(t); j++ {
			cost := 1
			if s[i-1] == t[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && s[i-1] == t[j-2] && s[i-2] == t[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(t)]
}

const scheduleHint = `use a 5-field cron expression like "*/5 * * * *" or a descriptor like "@every 1m" or "@hourly"`

func parseSchedule(v string) (string, error) {
	if _, err := schedule.Parse(v); err != nil {
		return "", fmt.Errorf("%w: %s", err, scheduleHint)
	}
	return v, nil
}

func parseLabel(v string) (string, error) {
	const hint = `use a label key without whitespace or "=", like "updater.enable"`
	switch {
	case strings.ContainsFunc(v, unicode.IsSpace):
		return "", errors.New("contains whitespace: " + hint)
	case strings.Contains(v, "="):
		// A key=value here would silently match no service, since the
		// value is not part of the key.
		return "", errors.New(`contains "=": ` + hint)
	}
	return v, nil
}

func parseDuration(v string, lo, hi time.Duration, examples string) (time.Duration, error) {
	hint := fmt.Sprintf("use a Go duration between %s and %s, like %s", short(lo), short(hi), examples)
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, errors.New("not a duration: " + hint)
	}
	if d < lo || d > hi {
		return 0, errors.New("out of range: " + hint)
	}
	return d, nil
}

// short drops the zero units time.Duration.String adds, so hints read "24h",
// not "24h0m0s".
func short(d time.Duration) string {
	s := d.String()
	if t, ok := strings.CutSuffix(s, "m0s"); ok {
		s = t + "m"
	}
	if t, ok := strings.CutSuffix(s, "h0m"); ok {
		s = t + "h"
	}
	return s
}

// parseURL accepts an absolute http(s) URL. A base URL (api) gets the
// trailing "/" the clients join method names to. The URL itself is not
// quoted in the error: a webhook URL is a secret.
func parseURL(v string, base bool, hint string) (string, error) {
	if strings.ContainsFunc(v, unicode.IsSpace) {
		// url.Parse takes a space in the path, so a secret file's
		// trailing space would become part of the URL ("…/s3cr3t%20").
		return "", errors.New("not an http(s) URL (it contains whitespace): use " + hint)
	}
	u, err := url.Parse(v)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return "", errors.New("not an http(s) URL: use " + hint)
	}
	if !base && strings.Trim(u.Path, "/") == "" {
		return "", errors.New("a URL without a path: use " + hint)
	}
	if base && !strings.HasSuffix(v, "/") {
		v += "/"
	}
	return v, nil
}

// parseNotifyURLs reads shoutrrr URLs, separated by commas, spaces or
// newlines (a secret file may hold one a line). Which services exist is
// the notifier's to say; here each must be a URL with a scheme. No URL is
// quoted: they carry tokens.
func parseNotifyURLs(v string) ([]string, error) {
	const hint = `use shoutrrr URLs separated by commas or spaces, like "discord://token@id ntfy://ntfy.sh/topic"`
	fields := strings.FieldsFunc(v, func(r rune) bool { return r == ',' || unicode.IsSpace(r) })
	for i, f := range fields {
		u, err := url.Parse(f)
		if err != nil || u.Scheme == "" || !strings.HasPrefix(f, u.Scheme+"://") {
			return nil, fmt.Errorf("has an entry (number %d) that is not a URL with a scheme: %s", i+1, hint)
		}
	}
	if len(fields) == 0 {
		return nil, errors.New("holds no URL: " + hint)
	}
	return fields, nil
}

func parseInt(v string, lo, hi int, example string) (int, error) {
	hint := fmt.Sprintf("use a whole number between %d and %d, like %s", lo, hi, example)
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, errors.New("not a whole number: " + hint)
	}
	if n < lo || n > hi {
		return 0, errors.New("out of range: " + hint)
	}
	return n, nil
}

// parseListen accepts the address the HTTP server listens on. Port 0
// picks a free port, which tests use; `updater healthcheck` can't find
// that one.
func parseListen(v string) (string, error) {
	const hint = `use host:port or :port, like ":8080" or "127.0.0.1:8080"`
	host, port, err := net.SplitHostPort(v)
	if err != nil {
		return "", errors.New("not an address: " + hint)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return "", errors.New("the port is not a number from 0 to 65535: " + hint)
	}
	if strings.ContainsFunc(host, unicode.IsSpace) {
		return "", errors.New("contains whitespace: " + hint)
	}
	return v, nil
}

// hostname is a DNS name as a registry host may be: dot-separated labels
// of letters, digits and inner hyphens.
var hostname = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$`)

// parseInsecureRegistries reads a comma-separated list of host:port. The
// port is required: an image reference names the registry with its port
// (registry.lan:5000/app), and that is what is matched.
func parseInsecureRegistries(v string) ([]string, error) {
	const hint = `use a comma-separated list of host:port, like "registry.lan:5000,10.0.0.7:5000" ` +
		`(no scheme or path; loopback registries need no entry)`
	var out []string
	for _, item := range strings.Split(v, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		host, port, err := net.SplitHostPort(item)
		if err != nil {
			return nil, fmt.Errorf("%q is not host:port: %s", item, hint)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("%q: the port is not a number from 1 to 65535: %s", item, hint)
		}
		if net.ParseIP(host) == nil && !hostname.MatchString(host) {
			return nil, fmt.Errorf("%q: %q is not a host name or IP address: %s", item, host, hint)
		}
		if item = strings.ToLower(item); !slices.Contains(out, item) {
			out = append(out, item)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("lists no registry: " + hint)
	}
	return out, nil
}

// parseSourceHosts reads the hosts whose repositories get commit links:
// host or host:port, as a source label's URL names them.
func parseSourceHosts(v string) ([]string, error) {
	const hint = `use a comma-separated list of hosts, like "gitlab.example.com,git.corp.example:8443" (no scheme or path)`
	var out []string
	for _, item := range strings.Split(v, ",") {
		item = strings.ToLower(strings.TrimSpace(item))
		if item == "" {
			continue
		}
		host := item
		if h, port, err := net.SplitHostPort(item); err == nil {
			if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
				return nil, fmt.Errorf("%q: the port is not a number from 1 to 65535: %s", item, hint)
			}
			host = h
		}
		if net.ParseIP(host) == nil && !hostname.MatchString(host) {
			return nil, fmt.Errorf("%q is not a host name or IP address: %s", item, hint)
		}
		if !slices.Contains(out, item) {
			out = append(out, item)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("lists no host: " + hint)
	}
	return out, nil
}

// minTokenLen keeps tokens out of guessing range; a random one from
// `openssl rand -hex 32` is 64 characters.
const minTokenLen = 16

// parseToken checks a shared secret without ever quoting it.
func parseToken(v string) (string, error) {
	const hint = "use a long random string, like the output of `openssl rand -hex 32`"
	switch {
	case strings.ContainsFunc(v, unicode.IsSpace):
		return "", errors.New("contains whitespace: " + hint)
	case len(v) < minTokenLen:
		return "", fmt.Errorf("is shorter than %d characters: %s", minTokenLen, hint)
	}
	return v, nil
}

// LongestInterval is the longest wait between two ticks of the schedule
// among the next 32 after from: what "recent" means for a cycle. A cron
// schedule's gaps vary (a weekday schedule waits over the weekend); 0
// for a schedule that does not parse, which Load never returns.
func (c Config) LongestInterval(from time.Time) time.Duration {
	s, err := schedule.Parse(c.Schedule)
	if err != nil {
		return 0
	}
	var longest time.Duration
	prev := s.Next(from)
	for range 32 {
		next := s.Next(prev)
		if next.IsZero() {
			break
		}
		longest = max(longest, next.Sub(prev))
		prev = next
	}
	return longest
}

// parseMountRoots reads the host paths hook jobs may bind below, and the
// volumes (by name) of other stacks they may mount. "/" is refused: it
// would allow the Docker socket, and so root on the node.
func parseMountRoots(v string) ([]string, error) {
	const hint = `use a comma-separated list of absolute host directories and volume names, like "/srv/backups,shared_certs"`
	var out []string
	for _, item := range strings.Split(v, ",") {
		item = strings.TrimSpace(item)
		switch {
		case item == "":
			continue
		case item == "/":
			return nil, errors.New(`"/" would let hooks bind every host path, the Docker socket included: ` + hint)
		case strings.HasPrefix(item, "/"):
			if path.Clean(item) != item || strings.ContainsFunc(item, unicode.IsControl) {
				return nil, fmt.Errorf("%q is not a clean absolute path (no .., //, trailing / or control characters): %s", item, hint)
			}
		case !volumeName.MatchString(item):
			return nil, fmt.Errorf("%q is neither an absolute path nor a volume name: %s", item, hint)
		}
		if !slices.Contains(out, item) {
			out = append(out, item)
		}
	}
	return out, nil
}

// volumeName is a Docker volume name.
var volumeName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`)

// parseHookImages reads repositories ("ghcr.io/acme/tools") and registry
// hosts ("registry.lan:5000") hook images may come from. A name is a host
// the way Docker reads one: with a dot, a port, or localhost.
func parseHookImages(v string) ([]string, error) {
	const hint = `use a comma-separated list of repositories and registry hosts, like "ghcr.io/acme/pgdump,registry.lan:5000"`
	var out []string
	for _, item := range strings.Split(v, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		var norm string
		if !strings.Contains(item, "/") && (strings.ContainsAny(item, ".:") || item == "localhost") {
			r, err := imageref.Parse(item + "/x")
			if err != nil {
				return nil, fmt.Errorf("%q is not a registry host: %s", item, hint)
			}
			norm = r.Host
		} else {
			r, err := imageref.Parse(item)
			if err != nil || r.Tag != "" || r.Digest != "" {
				return nil, fmt.Errorf("%q is not a repository (no tag or digest): %s", item, hint)
			}
			norm = r.Name()
		}
		if !slices.Contains(out, norm) {
			out = append(out, norm)
		}
	}
	return out, nil
}
