package swarm

import (
	"encoding/json"
	"fmt"
	neturl "net/url"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/types/swarm"

	"github.com/updater-dev/updater/internal/deploy"
	"github.com/updater-dev/updater/internal/imageref"
	"github.com/updater-dev/updater/internal/schedule"
)

const optIn = "updater.enable"

func TestParseHooksValid(t *testing.T) {
	labels := map[string]string{
		optIn:                     "true",
		"com.example.owner":       "ops", // not ours: ignored
		"updater.backup.image":    "127.0.0.1:5000/pg:16",
		"updater.backup.command":  `sh -c 'pg_dump -f "/backup/$UPDATER_DEPLOY_ID.dump"'`,
		"updater.backup.env":      "PGHOST=db, PGUSER=app\nPGOPTIONS=-c statement_timeout=0",
		"updater.backup.mounts":   "backups:/backup, /srv/certs:/certs:ro",
		"updater.backup.schedule": "@hourly",
		"updater.migrate.command": `["./app", "migrate", "--to", "latest"]`,
		"updater.migrate.env":     "MIGRATE_LOCK=1",
		"updater.hooks.timeout":   "10m",
		"updater.group":           "site.db_1",
	}

	h, err := parseHooks(labels, optIn)
	if err != nil {
		t.Fatalf("parseHooks: %v", err)
	}

	want := deploy.Hooks{
		Backup: &deploy.Hook{
			Image:   "127.0.0.1:5000/pg:16",
			Command: []string{"sh", "-c", `pg_dump -f "/backup/$UPDATER_DEPLOY_ID.dump"`},
			Env:     []string{"PGHOST=db", "PGUSER=app", "PGOPTIONS=-c statement_timeout=0"},
			Mounts: []deploy.Mount{
				{Source: "backups", Target: "/backup"},
				{Source: "/srv/certs", Target: "/certs", ReadOnly: true},
			},
		},
		Migrate: &deploy.Hook{
			Command: []string{"./app", "migrate", "--to", "latest"},
			Env:     []string{"MIGRATE_LOCK=1"},
		},
		Timeout:        10 * time.Minute,
		Group:          "site.db_1",
		BackupSchedule: "@hourly",
	}
	if !reflect.DeepEqual(h, want) {
		t.Errorf("parseHooks =\n%s\nwant\n%s", dump(h), dump(want))
	}
}

func TestParseHooksDefaults(t *testing.T) {
	for name, labels := range map[string]map[string]string{
		"no labels":    nil,
		"opt-in only":  {optIn: "true"},
		"foreign only": {"com.docker.stack.namespace": "site", "traefik.enable": "true"},
	} {
		t.Run(name, func(t *testing.T) {
			h, err := parseHooks(labels, optIn)
			if err != nil {
				t.Fatalf("parseHooks: %v", err)
			}
			if want := (deploy.Hooks{Timeout: 5 * time.Minute}); !reflect.DeepEqual(h, want) {
				t.Errorf("parseHooks = %s, want %s", dump(h), dump(want))
			}
		})
	}
}

func TestParseHooksCommandOnly(t *testing.T) {
	h, err := parseHooks(map[string]string{"updater.migrate.command": "migrate up"}, optIn)
	if err != nil {
		t.Fatalf("parseHooks: %v", err)
	}
	if h.Backup != nil || h.Migrate == nil || !reflect.DeepEqual(h.Migrate.Command, []string{"migrate", "up"}) ||
		h.Migrate.Image != "" || h.Migrate.Env != nil || h.Migrate.Mounts != nil {
		t.Errorf("parseHooks = %s, want only a migration with command [migrate up]", dump(h))
	}
}

// Each invalid value is reported naming the label and the value, so a
// person can find it in the stack file.
func TestParseHooksInvalid(t *testing.T) {
	cmd := map[string]string{"updater.backup.command": "pg_dump"}
	with := func(extra map[string]string) map[string]string {
		out := map[string]string{optIn: "true"}
		for k, v := range cmd {
			out[k] = v
		}
		for k, v := range extra {
			out[k] = v
		}
		return out
	}
	tests := []struct {
		name   string
		labels map[string]string
		want   []string // substrings of the error
	}{
		{"bad duration", with(map[string]string{"updater.hooks.timeout": "5 minutes"}),
			[]string{`updater.hooks.timeout="5 minutes"`, "between 1s and 24h"}},
		{"duration too short", with(map[string]string{"updater.hooks.timeout": "500ms"}),
			[]string{`updater.hooks.timeout="500ms"`}},
		{"duration too long", with(map[string]string{"updater.hooks.timeout": "25h"}),
			[]string{`updater.hooks.timeout="25h"`}},
		{"negative duration", with(map[string]string{"updater.hooks.timeout": "-5m"}),
			[]string{`updater.hooks.timeout="-5m"`}},
		{"unbalanced quote", with(map[string]string{"updater.backup.command": `sh -c 'pg_dump -f /backup/x`}),
			[]string{`updater.backup.command="sh -c 'pg_dump -f /backup/x"`, "balance the quotes"}},
		{"empty command", with(map[string]string{"updater.backup.command": ""}),
			[]string{`updater.backup.command=""`, "empty command"}},
		{"blank command", with(map[string]string{"updater.migrate.command": "  \t"}),
			[]string{`updater.migrate.command="  \t"`, "empty command"}},
		{"empty JSON array", with(map[string]string{"updater.migrate.command": "[]"}),
			[]string{`updater.migrate.command="[]"`, "empty command"}},
		{"JSON empty program", with(map[string]string{"updater.migrate.command": `["", "up"]`}),
			[]string{`updater.migrate.command="[\"\", \"up\"]"`, "empty command"}},
		{"JSON not strings", with(map[string]string{"updater.migrate.command": `["migrate", 1]`}),
			[]string{`updater.migrate.command="[\"migrate\", 1]"`, "not a JSON array of strings"}},
		{"JSON unterminated", with(map[string]string{"updater.migrate.command": `["migrate"`}),
			[]string{`updater.migrate.command="[\"migrate\""`, "not a JSON array of strings"}},
		{"env without =", with(map[string]string{"updater.backup.env": "PGHOST=db,PGUSER"}),
			[]string{"updater.backup.env (value not shown", "entry 2 (***)", "KEY=value"}},
		{"env key starts with digit", with(map[string]string{"updater.backup.env": "1PG=x"}),
			[]string{"updater.backup.env (value not shown", `entry 1 "1PG=***"`}},
		{"env key with dash", with(map[string]string{"updater.migrate.command": "up", "updater.migrate.env": "PG-HOST=db"}),
			[]string{"updater.migrate.env (value not shown", `"PG-HOST=***"`}},
		{"env empty key", with(map[string]string{"updater.backup.env": "=x"}),
			[]string{`updater.backup.env (value not shown`, `"=***"`}},
		{"mount without target", with(map[string]string{"updater.backup.mounts": "backups"}),
			[]string{`updater.backup.mounts="backups"`, "volume:/path"}},
		{"mount empty target", with(map[string]string{"updater.backup.mounts": "backups:"}),
			[]string{`updater.backup.mounts="backups:"`, "clean absolute path"}},
		{"relative target", with(map[string]string{"updater.backup.mounts": "backups:backup"}),
			[]string{`updater.backup.mounts="backups:backup"`, `target "backup"`}},
		{"target with ..", with(map[string]string{"updater.backup.mounts": "backups:/backup/../etc"}),
			[]string{`updater.backup.mounts="backups:/backup/../etc"`, "clean absolute path"}},
		{"source /", with(map[string]string{"updater.backup.mounts": "/:/host"}),
			[]string{`updater.backup.mounts="/:/host"`, "other than /"}},
		{"unclean host path", with(map[string]string{"updater.backup.mounts": "/srv/../etc:/host"}),
			[]string{`updater.backup.mounts="/srv/../etc:/host"`, "host path"}},
		{"relative host path", with(map[string]string{"updater.backup.mounts": "./data:/data"}),
			[]string{`updater.backup.mounts="./data:/data"`, "neither a volume name"}},
		{"volume with space", with(map[string]string{"updater.backup.mounts": "my backups:/backup"}),
			[]string{`updater.backup.mounts="my backups:/backup"`, "neither a volume name"}},
		{"volume with shell", with(map[string]string{"updater.backup.mounts": "a;rm -rf /:/backup"}),
			[]string{`updater.backup.mounts="a;rm -rf /:/backup"`, "neither a volume name"}},
		{"mount mode xx", with(map[string]string{"updater.backup.mounts": "backups:/backup:xx"}),
			[]string{`updater.backup.mounts="backups:/backup:xx"`, ":ro"}},
		{"mount too many parts", with(map[string]string{"updater.backup.mounts": "backups:/backup:ro:z"}),
			[]string{`updater.backup.mounts="backups:/backup:ro:z"`}},
		{"group with space", with(map[string]string{"updater.group": "db group"}),
			[]string{`updater.group="db group"`, "letters, digits"}},
		{"group starting with dash", with(map[string]string{"updater.group": "-db"}),
			[]string{`updater.group="-db"`}},
		{"backup image with whitespace", with(map[string]string{"updater.backup.image": "pg:16 --privileged"}),
			[]string{`updater.backup.image="pg:16 --privileged"`, "no whitespace"}},
		{"backup image not a reference", with(map[string]string{"updater.backup.image": "Postgres:16"}),
			[]string{`updater.backup.image="Postgres:16"`, "not an image reference"}},
		{"migrate image with newline", with(map[string]string{"updater.migrate.command": "up", "updater.migrate.image": "app\n:1"}),
			[]string{`updater.migrate.image="app\n:1"`}},
		{"backup image without command", map[string]string{"updater.backup.image": "pg:16"},
			[]string{`updater.backup.image="pg:16"`, "has no effect without updater.backup.command"}},
		{"backup env without command", map[string]string{"updater.backup.env": "A=1"},
			[]string{"updater.backup.env (value not shown", "has no effect"}},
		{"backup mounts without command", map[string]string{"updater.backup.mounts": "backups:/backup"},
			[]string{`updater.backup.mounts="backups:/backup"`, "has no effect"}},
		{"migrate image without command", map[string]string{"updater.migrate.image": "app:1"},
			[]string{`updater.migrate.image="app:1"`, "has no effect without updater.migrate.command"}},
		{"migrate env without command", map[string]string{"updater.migrate.env": "A=1"},
			[]string{"updater.migrate.env (value not shown", "has no effect"}},
		{"schedule without command", map[string]string{"updater.backup.schedule": "@hourly"},
			[]string{`updater.backup.schedule="@hourly"`, "has no effect"}},
		{"misspelt label", with(map[string]string{"updater.backup.comand": "pg_dump"}),
			[]string{"updater.backup.comand is not an updater label"}},
		{"migrate mounts not supported", with(map[string]string{"updater.migrate.mounts": "backups:/backup"}),
			[]string{"updater.migrate.mounts is not an updater label"}},
		{"bad schedule", with(map[string]string{"updater.backup.schedule": "every hour"}),
			[]string{`updater.backup.schedule="every hour"`, "cron expression"}},
		{"six-field schedule", with(map[string]string{"updater.backup.schedule": "0 0 * * * *"}),
			[]string{`updater.backup.schedule="0 0 * * * *"`}},
		// robfig/cron panics on these; a label is user input.
		{"schedule TZ only", with(map[string]string{"updater.backup.schedule": "TZ=UTC"}),
			[]string{`updater.backup.schedule="TZ=UTC"`}},
		{"schedule CRON_TZ only", with(map[string]string{"updater.backup.schedule": "CRON_TZ=Europe/Berlin"}),
			[]string{`updater.backup.schedule="CRON_TZ=Europe/Berlin"`}},

		// Hostile values: each is refused, never cut down to something
		// that would run.
		{"duration overflow", with(map[string]string{"updater.hooks.timeout": "9999999999h"}), []string{`updater.hooks.timeout="9999999999h"`}},
		{"duration overflow in ns", with(map[string]string{"updater.hooks.timeout": "99999999999999999999ns"}), []string{"between 1s and 24h"}},
		{"duration just over 24h", with(map[string]string{"updater.hooks.timeout": "24h0m0.000000001s"}), []string{"between 1s and 24h"}},
		{"negative second", with(map[string]string{"updater.hooks.timeout": "-1s"}), []string{"between 1s and 24h"}},
		{"zero duration", with(map[string]string{"updater.hooks.timeout": "0"}), []string{"between 1s and 24h"}},
		{"duration with NUL", with(map[string]string{"updater.hooks.timeout": "5m\x00"}), []string{"between 1s and 24h"}},
		{"duration with a unicode digit", with(map[string]string{"updater.hooks.timeout": "٥m"}), []string{"between 1s and 24h"}},
		{"schedule with 1000 fields", with(map[string]string{"updater.backup.schedule": strings.Repeat("* ", 1000)}), []string{"updater.backup.schedule="}},
		{"schedule every millisecond", with(map[string]string{"updater.backup.schedule": "@every 1ms"}), []string{"at least 1s"}},
		{"schedule every negative", with(map[string]string{"updater.backup.schedule": "@every -5m"}), []string{"at least 1s"}},
		{"schedule every fraction", with(map[string]string{"updater.backup.schedule": "TZ=UTC @every 1.5s"}), []string{"whole seconds"}},
		{"schedule never runs", with(map[string]string{"updater.backup.schedule": "0 0 30 2 *"}), []string{`updater.backup.schedule="0 0 30 2 *"`}},
		{"schedule with shell", with(map[string]string{"updater.backup.schedule": "@hourly; rm -rf /"}), []string{"updater.backup.schedule="}},
		{"mount target /", with(map[string]string{"updater.backup.mounts": "backups:/"}), []string{`the target "/" would cover`}},
		{"mount target /..", with(map[string]string{"updater.backup.mounts": "backups:/.."}), []string{`the target "/.."`}},
		{"mount target /proc", with(map[string]string{"updater.backup.mounts": "backups:/proc"}), []string{"kernel filesystems"}},
		{"mount target in /sys", with(map[string]string{"updater.backup.mounts": "backups:/sys/fs/cgroup"}), []string{"kernel filesystems"}},
		{"mount target /proc by ..", with(map[string]string{"updater.backup.mounts": "backups:/backup/../proc"}), []string{"clean absolute path"}},
		{"mount target with trailing space", with(map[string]string{"updater.backup.mounts": "backups:/backup :ro"}), []string{`the target "/backup "`}},
		{"mount target with NUL", with(map[string]string{"updater.backup.mounts": "backups:/backup\x00/x"}), []string{"clean absolute path"}},
		{"mount target with newline", with(map[string]string{"updater.backup.mounts": "backups:/backup\n/etc"}), []string{"clean absolute path"}},
		{"host path /proc/self/root", with(map[string]string{"updater.backup.mounts": "/proc/self/root:/host"}), []string{"kernel filesystem"}},
		{"host path /proc/1/root", with(map[string]string{"updater.backup.mounts": "/proc/1/root:/host:ro"}), []string{"kernel filesystem"}},
		{"host path /dev", with(map[string]string{"updater.backup.mounts": "/dev/sda:/disk"}), []string{"kernel filesystem"}},
		{"host path with NUL", with(map[string]string{"updater.backup.mounts": "/srv/x\x00:/backup"}), []string{"clean absolute path"}},
		{"host path with trailing space", with(map[string]string{"updater.backup.mounts": "/srv/x :/backup"}), []string{"clean absolute path"}},
		{"volume with NUL", with(map[string]string{"updater.backup.mounts": "vol\x00:/backup"}), []string{"is neither"}},
		{"volume ..", with(map[string]string{"updater.backup.mounts": "..:/backup"}), []string{"is neither"}},
		{"volume unicode", with(map[string]string{"updater.backup.mounts": "bаckups:/backup"}), []string{"is neither"}},
		{"env with NUL", with(map[string]string{"updater.backup.env": "A=b\x00c"}), []string{"NUL"}},
		{"env key with unicode", with(map[string]string{"updater.backup.env": "ÉTÉ=1"}), []string{"not KEY=value"}},
		{"env key with shell", with(map[string]string{"updater.backup.env": "A;rm -rf /=1"}), []string{"not KEY=value"}},
		{"command with NUL", with(map[string]string{"updater.backup.command": "pg_dump\x00 -f /x"}), []string{"NUL"}},
		{"JSON command with NUL", with(map[string]string{"updater.backup.command": `["sh", "-c", "a\u0000b"]`}), []string{"NUL"}},
		{"group with NUL", with(map[string]string{"updater.group": "db\x00"}), []string{"updater.group="}},
		{"group ..", with(map[string]string{"updater.group": ".."}), []string{"updater.group="}},
		{"group with slash", with(map[string]string{"updater.group": "a/../b"}), []string{"updater.group="}},
		{"group unicode", with(map[string]string{"updater.group": "dб"}), []string{"updater.group="}},
		{"image with carriage return", with(map[string]string{"updater.backup.image": "pg:16\r"}), []string{"no whitespace"}},
		{"image with NUL", with(map[string]string{"updater.backup.image": "pg:16\x00"}), []string{"no whitespace"}},
		{"image with no-break space", with(map[string]string{"updater.backup.image": "pg:16\u00a0--privileged"}), []string{"no whitespace"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := parseHooks(tt.labels, optIn)
			if err == nil {
				t.Fatalf("parseHooks = %s, want an error", dump(h))
			}
			if !reflect.DeepEqual(h, deploy.Hooks{}) {
				t.Errorf("parseHooks returned %s with its error, want zero hooks", dump(h))
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "invalid hook labels: ") {
				t.Errorf("error %q does not say what it is about", msg)
			}
			for _, s := range tt.want {
				if !strings.Contains(msg, s) {
					t.Errorf("error %q lacks %q", msg, s)
				}
			}
		})
	}
}

func TestParseHooksValidEdges(t *testing.T) {
	tests := []struct {
		name   string
		labels map[string]string
		check  func(deploy.Hooks) bool
	}{
		{"shortest timeout", map[string]string{"updater.hooks.timeout": "1s"},
			func(h deploy.Hooks) bool { return h.Timeout == time.Second }},
		{"longest timeout", map[string]string{"updater.hooks.timeout": "24h"},
			func(h deploy.Hooks) bool { return h.Timeout == 24*time.Hour }},
		{"five-field schedule", map[string]string{"updater.backup.command": "x", "updater.backup.schedule": "30 2 * * *"},
			func(h deploy.Hooks) bool { return h.BackupSchedule == "30 2 * * *" }},
		{"schedule with time zone", map[string]string{"updater.backup.command": "x", "updater.backup.schedule": "CRON_TZ=UTC 0 3 * * *"},
			func(h deploy.Hooks) bool { return h.BackupSchedule == "CRON_TZ=UTC 0 3 * * *" }},
		{"every", map[string]string{"updater.backup.command": "x", "updater.backup.schedule": "@every 6h"},
			func(h deploy.Hooks) bool { return h.BackupSchedule == "@every 6h" }},
		{"every second", map[string]string{"updater.backup.command": "x", "updater.backup.schedule": "@every 1s"},
			func(h deploy.Hooks) bool { return h.BackupSchedule == "@every 1s" }},
		{"every with time zone", map[string]string{"updater.backup.command": "x", "updater.backup.schedule": "TZ=UTC @every 90s"},
			func(h deploy.Hooks) bool { return h.BackupSchedule == "TZ=UTC @every 90s" }},
		{"leap day", map[string]string{"updater.backup.command": "x", "updater.backup.schedule": "0 3 29 2 *"},
			func(h deploy.Hooks) bool { return h.BackupSchedule == "0 3 29 2 *" }},
		{"rw mount", map[string]string{"updater.backup.command": "x", "updater.backup.mounts": "backups:/backup:rw"},
			func(h deploy.Hooks) bool {
				return reflect.DeepEqual(h.Backup.Mounts, []deploy.Mount{{Source: "backups", Target: "/backup"}})
			}},
		{"empty env and mounts", map[string]string{"updater.backup.command": "x", "updater.backup.env": " , ", "updater.backup.mounts": ","},
			func(h deploy.Hooks) bool { return h.Backup.Env == nil && h.Backup.Mounts == nil }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := parseHooks(tt.labels, optIn)
			if err != nil {
				t.Fatalf("parseHooks: %v", err)
			}
			if !tt.check(h) {
				t.Errorf("parseHooks = %s", dump(h))
			}
		})
	}
}

func TestParseHooksReportsEveryProblem(t *testing.T) {
	labels := map[string]string{
		optIn:                     "true",
		"updater.backup.comand":   "pg_dump",
		"updater.hooks.timout":    "5m",
		"updater.hooks.timeout":   "forever",
		"updater.backup.image":    "pg:16",
		"updater.migrate.command": `["migrate", 1]`,
		"updater.migrate.env":     "NOPE",
		"updater.group":           "a b",
	}

	_, err := parseHooks(labels, optIn)
	if err == nil {
		t.Fatal("parseHooks: want an error")
	}
	for _, s := range []string{
		"updater.backup.comand is not an updater label",
		"updater.hooks.timout is not an updater label",
		`updater.hooks.timeout="forever"`,
		`updater.backup.image="pg:16": has no effect`,
		`updater.migrate.command="[\"migrate\", 1]"`,
		"updater.migrate.env (value not shown, it may hold secrets): entry 1 (***)",
		`updater.group="a b"`,
	} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q lacks %q", err, s)
		}
	}
	// Unknown labels come in a stable order, so the report does not
	// change from cycle to cycle.
	if i, j := strings.Index(err.Error(), "updater.backup.comand"), strings.Index(err.Error(), "updater.hooks.timout"); i > j {
		t.Errorf("unknown labels out of order in %q", err)
	}
}

func TestParseCommand(t *testing.T) {
	tests := []struct {
		in      string
		want    []string
		wantErr string
	}{
		{"pg_dump -f /backup/db.dump", []string{"pg_dump", "-f", "/backup/db.dump"}, ""},
		{`  sh -c "echo 'a b'"  `, []string{"sh", "-c", "echo 'a b'"}, ""},
		{`echo $HOME "$PGHOST" '$X'`, []string{"echo", "$HOME", "$PGHOST", "$X"}, ""},
		{`a\ b c`, []string{"a b", "c"}, ""},
		{"migrate\nup", []string{"migrate", "up"}, ""},
		{`["sh", "-c", "a && b"]`, []string{"sh", "-c", "a && b"}, ""},
		{` ["migrate"] `, []string{"migrate"}, ""},
		{`'unbalanced`, nil, "balance the quotes"},
		{`"unbalanced`, nil, "balance the quotes"},
		{"", nil, "empty command"},
		{`""`, nil, "empty command"},
		{"[]", nil, "empty command"},
		{`[""]`, nil, "empty command"},
		{`[1, 2]`, nil, "not a JSON array of strings"},
		{`["a",]`, nil, "not a JSON array of strings"},
	}
	for _, tt := range tests {
		got, err := parseCommand(tt.in)
		switch {
		case tt.wantErr != "":
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("parseCommand(%q) = %q, %v; want an error with %q", tt.in, got, err, tt.wantErr)
			}
		default:
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Errorf("parseCommand(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
			}
		}
	}
}

func TestParseEnv(t *testing.T) {
	tests := []struct {
		in      string
		want    []string
		wantErr string
	}{
		{"", nil, ""},
		{"A=1", []string{"A=1"}, ""},
		{"A=1,B=2", []string{"A=1", "B=2"}, ""},
		{"A=1\nB=2\n", []string{"A=1", "B=2"}, ""},
		{" A=1 ,\n\n B = 2", nil, `"B =***"`},
		{"_X=", []string{"_X="}, ""},
		{"DSN=postgres://u@db/app?sslmode=disable", []string{"DSN=postgres://u@db/app?sslmode=disable"}, ""},
		{"A==b", []string{"A==b"}, ""},
		{"A", nil, `entry 1 (***) is not KEY=value`},
		{"A=1,B", nil, `entry 2 (***)`},
		{"9A=1", nil, `"9A=***"`},
		{"A.B=1", nil, `"A.B=***"`},
		{"=1", nil, `"=***"`},
	}
	for _, tt := range tests {
		got, err := parseEnv(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("parseEnv(%q) = %q, %v; want an error with %q", tt.in, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("parseEnv(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

func TestParseMounts(t *testing.T) {
	tests := []struct {
		in      string
		want    []deploy.Mount
		wantErr string
	}{
		{"", nil, ""},
		{"backups:/backup", []deploy.Mount{{Source: "backups", Target: "/backup"}}, ""},
		{"site_backups-1.0:/backup:ro", []deploy.Mount{{Source: "site_backups-1.0", Target: "/backup", ReadOnly: true}}, ""},
		{"backups:/backup:rw", []deploy.Mount{{Source: "backups", Target: "/backup"}}, ""},
		{"/srv/backups:/backup , certs:/certs:ro", []deploy.Mount{
			{Source: "/srv/backups", Target: "/backup"},
			{Source: "certs", Target: "/certs", ReadOnly: true},
		}, ""},
		{"backups", nil, "volume:/path"},
		{"backups:/backup:xx", nil, "optionally followed by :ro"},
		{"backups:/backup:RO", nil, "optionally followed by :ro"},
		{"backups:/a:ro:rw", nil, "volume:/path"},
		{"backups:", nil, `the target ""`},
		{"backups:backup", nil, `the target "backup"`},
		{"backups:/backup/", nil, `the target "/backup/"`},
		{"backups:/backup/../etc", nil, `the target "/backup/../etc"`},
		{"backups:/..", nil, `the target "/.."`},
		{"/:/host", nil, `the host path "/"`},
		{"/srv//x:/host", nil, `the host path "/srv//x"`},
		{"/srv/../etc:/host", nil, `the host path "/srv/../etc"`},
		{":/backup", nil, `"" is neither a volume name`},
		{"my vol:/backup", nil, `"my vol" is neither`},
		{"a;rm -rf /:/backup", nil, `"a;rm -rf /" is neither`},
		{"$(id):/backup", nil, "is neither"},
		{"..:/backup", nil, "is neither"},
		{"backups:/backup,bad", nil, `entry "bad"`},
		{"backups:/", nil, `the target "/" would cover`},
		{"backups:/proc", nil, "kernel filesystems"},
		{"backups:/dev/shm", nil, "kernel filesystems"},
		{"backups:/backup :ro", nil, `the target "/backup "`},
		{"backups:/b\x00", nil, `the target "/b\x00"`},
		{"/proc/self/root:/host", nil, "kernel filesystem"},
		{"/sys:/sys:ro", nil, "kernel filesystem"},
		{"/srv/x\x00y:/backup", nil, "clean absolute path"},
		{"/srv/backups:/procedures", []deploy.Mount{{Source: "/srv/backups", Target: "/procedures"}}, ""},
		{"/srv/my backups:/backup", []deploy.Mount{{Source: "/srv/my backups", Target: "/backup"}}, ""},
	}
	for _, tt := range tests {
		got, err := parseMounts(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("parseMounts(%q) = %+v, %v; want an error with %q", tt.in, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("parseMounts(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
}

// dump shows hooks with the hook pointers followed.
func dump(h deploy.Hooks) string {
	show := func(hk *deploy.Hook) string {
		if hk == nil {
			return "nil"
		}
		return fmt.Sprintf("%+v", *hk)
	}
	return fmt.Sprintf("{Backup:%s Migrate:%s Timeout:%s Group:%q BackupSchedule:%q}",
		show(h.Backup), show(h.Migrate), h.Timeout, h.Group, h.BackupSchedule)
}

// updater.approve takes "manual" or "auto" and nothing else: a boolean
// would read as "approve automatically" to some and "needs approval" to
// others.
func TestParseHooksApprove(t *testing.T) {
	for _, tt := range []struct {
		value string // "-": label absent
		want  bool
	}{{"-", false}, {"auto", false}, {"manual", true}} {
		t.Run(tt.value, func(t *testing.T) {
			labels := map[string]string{optIn: "true"}
			if tt.value != "-" {
				labels["updater.approve"] = tt.value
			}
			h, err := parseHooks(labels, optIn)
			if err != nil {
				t.Fatalf("parseHooks: %v", err)
			}
			if h.Approve != tt.want {
				t.Errorf("Approve = %v, want %v", h.Approve, tt.want)
			}
		})
	}
}

// A bad value is an error naming the label, the value and what is valid;
// the service still counts as asking for approval, so nothing deploys
// without a person even while its labels are wrong.
func TestParseHooksApproveInvalid(t *testing.T) {
	for _, v := range []string{"true", "yes", "Manual", "", " manual"} {
		t.Run(fmt.Sprintf("%q", v), func(t *testing.T) {
			h, err := parseHooks(map[string]string{optIn: "true", "updater.approve": v}, optIn)
			if err == nil {
				t.Fatalf("parseHooks = %s, want an error", dump(h))
			}
			for _, want := range []string{fmt.Sprintf("updater.approve=%q", v), `"manual"`, `"auto"`} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q lacks %q", err, want)
				}
			}
			if !h.Approve {
				t.Error("a service with a bad updater.approve value would deploy without approval")
			}
		})
	}
	h, err := parseHooks(map[string]string{"updater.approve": "manual", "updater.hooks.timeout": "soon"}, optIn)
	if err == nil || !h.Approve {
		t.Fatalf("manual approval with another bad label: Approve=%v err=%v, want true and an error", h.Approve, err)
	}
	if _, err := parseHooks(map[string]string{"updater.aprove": "manual"}, optIn); err == nil ||
		!strings.Contains(err.Error(), "updater.aprove is not an updater label") || !strings.Contains(err.Error(), "updater.approve") {
		t.Fatalf("misspelt approve label: %v, want it named and updater.approve suggested", err)
	}
}

// hookLabels are the labels parseHooks reads, the opt-in label included.
var hookLabels = []string{optIn, labelBackupImage, labelBackupCommand, labelBackupMounts, labelBackupEnv, labelBackupSchedule,
	labelMigrateImage, labelMigrateCommand, labelMigrateEnv, labelHooksTimeout, labelGroup, labelApprove}

// FuzzParseHooks feeds arbitrary label maps to parseHooks: lines of
// key=value (any key, ours or not), and one value of any bytes, newlines
// included, for the label hookLabels[which]. Whatever the labels, it
// returns hooks within every documented bound, which parseHooks accepts
// again when written back as labels, or an error and no hooks (but the
// approval a service asked for).
func FuzzParseHooks(f *testing.F) {
	f.Add("", uint8(0), "")
	f.Add("updater.backup.command=pg_dump -f /backup/db.dump\nupdater.backup.mounts=backups:/backup, /srv/certs:/certs:ro\n"+
		"updater.backup.env=PGHOST=db,PGUSER=app\nupdater.backup.schedule=@hourly\nupdater.hooks.timeout=10m\nupdater.group=site.db_1",
		uint8(0), "")
	f.Add(`updater.migrate.command=["./app", "migrate"]`+"\nupdater.migrate.image=app:2\nupdater.approve=manual", uint8(0), "")
	f.Add("updater.backup.command=x", uint8(3), "vol:/..")
	f.Add("updater.backup.command=x", uint8(9), "9999999999h")
	f.Add("updater.backup.command=x", uint8(5), "TZ=UTC")
	f.Fuzz(func(t *testing.T, lines string, which uint8, value string) {
		// Labels reach the updater as JSON, so they are valid UTF-8.
		labels := map[string]string{}
		for _, line := range strings.Split(lines, "\n") {
			if k, v, ok := strings.Cut(line, "="); ok {
				labels[strings.ToValidUTF8(k, "\uFFFD")] = strings.ToValidUTF8(v, "\uFFFD")
			}
		}
		labels[hookLabels[int(which)%len(hookLabels)]] = strings.ToValidUTF8(value, "\uFFFD")

		h, err := parseHooks(labels, optIn)
		if err != nil {
			v, asked := labels[labelApprove]
			if !reflect.DeepEqual(h, deploy.Hooks{Approve: asked && v != "auto"}) {
				t.Fatalf("parseHooks returned %s with its error %v", dump(h), err)
			}
			if !strings.HasPrefix(err.Error(), "invalid hook labels: ") {
				t.Fatalf("error %q does not say what it is about", err)
			}
			return
		}
		checkHooks(t, labels, h)
		again, err := parseHooks(hookLabelsOf(h), optIn)
		if err != nil || !reflect.DeepEqual(again, h) {
			t.Fatalf("accepted %s from %q, but not when written back: %s, %v", dump(h), labels, dump(again), err)
		}
	})
}

// checkHooks: accepted hooks are within every bound the labels document.
func checkHooks(t *testing.T, labels map[string]string, h deploy.Hooks) {
	t.Helper()
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("accepted "+format+": %s from %q", append(args, dump(h), labels)...)
	}
	for l := range labels {
		if strings.HasPrefix(l, "updater.") && !slices.Contains(hookLabels, l) && !slices.Contains(verifyLabels, l) {
			fail("the unknown label %q", l)
		}
	}
	if h.Timeout < time.Second || h.Timeout > 24*time.Hour {
		fail("the timeout %s", h.Timeout)
	}
	if _, set := labels[labelHooksTimeout]; !set && h.Timeout != defaultHookTimeout {
		fail("the timeout %s without a label", h.Timeout)
	}
	if h.Approve != (labels[labelApprove] == "manual") {
		fail("approve=%v", h.Approve)
	}
	if h.Group != "" && !nameRE.MatchString(h.Group) {
		fail("the group %q", h.Group)
	}
	if h.BackupSchedule != "" && (h.Backup == nil || !validSchedule(h.BackupSchedule)) {
		fail("the backup schedule %q", h.BackupSchedule)
	}
	for _, c := range []struct {
		hk      *deploy.Hook
		command string
	}{{h.Backup, labelBackupCommand}, {h.Migrate, labelMigrateCommand}} {
		if _, set := labels[c.command]; set != (c.hk != nil) {
			fail("a hook that is there=%v with %s set=%v", c.hk != nil, c.command, set)
		}
		if c.hk == nil {
			continue
		}
		hk := c.hk
		if _, err := imageref.Parse(hk.Image); hk.Image != "" && err != nil {
			fail("the image %q", hk.Image)
		}
		if len(hk.Command) == 0 || hk.Command[0] == "" || slices.ContainsFunc(hk.Command, func(a string) bool { return strings.ContainsRune(a, 0) }) {
			fail("the command %q", hk.Command)
		}
		for _, e := range hk.Env {
			k, v, ok := strings.Cut(e, "=")
			if !ok || !envRE.MatchString(k) || strings.ContainsAny(v, "\x00,\n") || strings.TrimSpace(e) != e {
				fail("the environment entry %q", e)
			}
		}
		for _, m := range hk.Mounts {
			if !cleanAbs(m.Target) || m.Target == "/" || kernelPath(m.Target) || strings.ContainsFunc(m.Target, unsafePathRune) {
				fail("the mount target %q", m.Target)
			}
			if strings.HasPrefix(m.Source, "/") {
				if !cleanAbs(m.Source) || m.Source == "/" || kernelPath(m.Source) || strings.ContainsFunc(m.Source, unsafePathRune) {
					fail("the host path %q", m.Source)
				}
			} else if !nameRE.MatchString(m.Source) {
				fail("the volume %q", m.Source)
			}
		}
	}
}

// hookLabelsOf writes hooks back as the labels that say them.
func hookLabelsOf(h deploy.Hooks) map[string]string {
	l := map[string]string{labelHooksTimeout: h.Timeout.String()}
	put := func(label, v string) {
		if v != "" {
			l[label] = v
		}
	}
	put(labelGroup, h.Group)
	put(labelBackupSchedule, h.BackupSchedule)
	if h.Approve {
		l[labelApprove] = "manual"
	}
	hook := func(hk *deploy.Hook, image, command, env, mounts string) {
		if hk == nil {
			return
		}
		put(image, hk.Image)
		cmd, _ := json.Marshal(hk.Command)
		l[command] = string(cmd)
		put(env, strings.Join(hk.Env, ","))
		var ms []string
		for _, m := range hk.Mounts {
			s := m.Source + ":" + m.Target
			if m.ReadOnly {
				s += ":ro"
			}
			ms = append(ms, s)
		}
		if mounts != "" {
			put(mounts, strings.Join(ms, ","))
		}
	}
	hook(h.Backup, labelBackupImage, labelBackupCommand, labelBackupEnv, labelBackupMounts)
	hook(h.Migrate, labelMigrateImage, labelMigrateCommand, labelMigrateEnv, "")
	return l
}

// FuzzParseMounts: an accepted mount has a clean absolute target that
// hides nothing of the container's own, and a source that is a volume
// name or a clean absolute host path outside the kernel's filesystems.
func FuzzParseMounts(f *testing.F) {
	for _, s := range []string{"backups:/backup", "/srv/backups:/backup:ro, certs:/certs:rw", "backups:/..", "/proc/self/root:/host",
		"/srv/x\x00:/backup", "vol:/backup :ro", "a;rm -rf /:/backup", "$(id):/backup", "vol:/", "vol:/proc/sys", "..:/x", ",,,"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		ms, err := parseMounts(v)
		if err != nil {
			if ms != nil {
				t.Fatalf("parseMounts(%q) = %+v with its error %v", v, ms, err)
			}
			return
		}
		checkHooks(t, map[string]string{labelBackupCommand: "x", labelBackupMounts: v},
			deploy.Hooks{Timeout: defaultHookTimeout, Backup: &deploy.Hook{Command: []string{"x"}, Mounts: ms}})
	})
}

func validSchedule(spec string) bool {
	_, err := schedule.Parse(spec)
	return err == nil
}

// verifyLabels are the probe and bake labels: parseHooks knows them,
// verification reads them.
var verifyLabels = []string{deploy.LabelProbeURL, deploy.LabelProbeNetwork, deploy.LabelProbeExpect, deploy.LabelProbeCount,
	deploy.LabelProbeInterval, deploy.LabelProbeTimeout, deploy.LabelProbeHeader, deploy.LabelBake}

var oneNet = []swarm.NetworkAttachmentConfig{{Target: "net1"}}

func TestVerificationLabels(t *testing.T) {
	url := map[string]string{deploy.LabelProbeURL: "http://{task}:8080/orders?limit=1"}
	with := func(extra ...string) map[string]string {
		out := map[string]string{optIn: "true"}
		for k, v := range url {
			out[k] = v
		}
		for i := 0; i+1 < len(extra); i += 2 {
			out[extra[i]] = extra[i+1]
		}
		return out
	}
	for _, tc := range []struct {
		name   string
		labels map[string]string
		nets   []swarm.NetworkAttachmentConfig
		want   []string // substrings of the error; none: valid
	}{
		{"no probe, no bake", map[string]string{optIn: "true"}, nil, nil},
		{"defaults", with(), oneNet, nil},
		{"bake only, no network needed", map[string]string{deploy.LabelBake: "5m"}, nil, nil},
		{"every label", with(deploy.LabelProbeNetwork, "backend", deploy.LabelProbeExpect, "200,204 body~=ok", deploy.LabelProbeCount, "5",
			deploy.LabelProbeInterval, "1s", deploy.LabelProbeTimeout, "3s", deploy.LabelProbeHeader, "Host: shop.example.com",
			deploy.LabelBake, "40s"), oneNet, nil},
		{"no network at all", with(), nil, []string{`updater.probe.url="http://{task}:8080/orders?limit=xxxxx"` /* query values masked: they may be tokens */, "attached to no network", "networks:"}},
		{"unknown placeholder", map[string]string{deploy.LabelProbeURL: "http://{host}:8080/"}, oneNet,
			[]string{`updater.probe.url="http://{host}:8080/"`, "unknown placeholder {host}", "{task}, {service} and {digest}"}},
		{"no task placeholder", map[string]string{deploy.LabelProbeURL: "http://shop:8080/"}, oneNet,
			[]string{`updater.probe.url="http://shop:8080/"`, "names no {task}"}},
		{"not http", map[string]string{deploy.LabelProbeURL: "tcp://{task}:5432"}, oneNet, []string{"want an http:// or https:// URL"}},
		{"another host", map[string]string{deploy.LabelProbeURL: "http://x{task}:80/"}, oneNet, []string{"the host must be {task}"}},
		{"expect matches nothing", with(deploy.LabelProbeExpect, "body~=x"), oneNet,
			[]string{`updater.probe.expect="body~=x"`, "no status", "200, 2xx or 200,204"}},
		{"expect not a status", with(deploy.LabelProbeExpect, "ok"), oneNet, []string{`updater.probe.expect="ok"`, "not an HTTP status"}},
		{"expect 600", with(deploy.LabelProbeExpect, "600"), oneNet, []string{`"600" is not an HTTP status`}},
		{"count 0", with(deploy.LabelProbeCount, "0"), oneNet, []string{`updater.probe.count="0"`, "1 to 100"}},
		{"count huge", with(deploy.LabelProbeCount, "1000"), oneNet, []string{`updater.probe.count="1000"`}},
		{"interval not a duration", with(deploy.LabelProbeInterval, "2"), oneNet, []string{`updater.probe.interval="2"`, "e.g. 2s"}},
		{"timeout too long", with(deploy.LabelProbeTimeout, "2m"), oneNet, []string{`updater.probe.timeout="2m"`, "100ms to 1m0s"}},
		{"header without colon", with(deploy.LabelProbeHeader, "Host shop"), oneNet, []string{`updater.probe.header="Host shop"`, "Name: value"}},
		{"probe label without the URL", map[string]string{deploy.LabelProbeCount: "3"}, oneNet,
			[]string{"updater.probe.count is set without updater.probe.url"}},
		{"bake too short", map[string]string{deploy.LabelBake: "5s"}, nil, []string{`updater.bake="5s"`, "from 10s to 24h0m0s", "e.g. 5m"}},
		{"bake too long", map[string]string{deploy.LabelBake: "25h"}, nil, []string{`updater.bake="25h"`}},
		{"bake not a duration", map[string]string{deploy.LabelBake: "forever"}, nil, []string{`updater.bake="forever"`}},
		{"both bad, both named", with(deploy.LabelProbeCount, "x", deploy.LabelBake, "1s"), oneNet,
			[]string{`updater.probe.count="x"`, `updater.bake="1s"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tg := withVerification(deploy.Target{}, swarm.ServiceSpec{Annotations: swarm.Annotations{Labels: tc.labels},
				TaskTemplate: swarm.TaskSpec{Networks: tc.nets}})
			if len(tc.want) == 0 {
				if tg.HooksErr != nil {
					t.Fatalf("refused: %v", tg.HooksErr)
				}
				if _, set := tc.labels[deploy.LabelProbeURL]; set != (tg.Probe != nil) {
					t.Errorf("probe %+v from %q", tg.Probe, tc.labels)
				}
				if want, _ := deploy.ParseBake(tc.labels[deploy.LabelBake]); tg.Bake != want {
					t.Errorf("bake %s, want %s", tg.Bake, want)
				}
				// Hooks know these labels: none is refused as unknown.
				if _, err := parseHooks(tc.labels, optIn); err != nil {
					t.Errorf("parseHooks refuses the probe labels: %v", err)
				}
				return
			}
			if tg.HooksErr == nil || tg.Probe != nil || tg.Bake != 0 {
				t.Fatalf("target %+v: want it refused with no probe and no bake", tg)
			}
			for _, w := range tc.want {
				if !strings.Contains(tg.HooksErr.Error(), w) {
					t.Errorf("error %q does not say %q", tg.HooksErr, w)
				}
			}
		})
	}
}

// A bad hook label and a good probe: no probe either (not deployed).
func TestVerificationWithHookError(t *testing.T) {
	tg := withVerification(deploy.Target{HooksErr: fmt.Errorf("invalid hook labels: x")}, swarm.ServiceSpec{
		Annotations:  swarm.Annotations{Labels: map[string]string{deploy.LabelProbeURL: "http://{task}/", deploy.LabelBake: "1m"}},
		TaskTemplate: swarm.TaskSpec{Networks: oneNet}})
	if tg.HooksErr == nil || tg.Probe != nil || tg.Bake != 0 {
		t.Errorf("%+v", tg)
	}
}

// FuzzVerification: whatever the probe and bake labels, a service gets a
// probe within every documented bound and a URL template that makes an
// http(s) URL at the task's address, or it is refused, naming a label.
func FuzzVerification(f *testing.F) {
	f.Add("http://{task}:8080/", "", "", "", "", "", "")
	f.Add("https://{task}/x?token={digest}&s={service}", "2xx,304 body~=ok", "100", "100ms", "1m", "Host: a.example", "24h")
	f.Add("http://{task}:{port}/", "200", "0", "1", "x", "Host", "9s")
	f.Add("http://[{task}]:80/", "5xx", "-1", "-1s", "0", ": v", "10s")
	f.Add("http://user:pw@{task}/", " body~=", "3 ", "2s\n", "5s", "X: a\r\nY: b", "1h")
	f.Fuzz(func(t *testing.T, url, expect, count, interval, timeout, header, bake string) {
		labels := map[string]string{deploy.LabelProbeURL: url}
		for k, v := range map[string]string{deploy.LabelProbeExpect: expect, deploy.LabelProbeCount: count,
			deploy.LabelProbeInterval: interval, deploy.LabelProbeTimeout: timeout, deploy.LabelProbeHeader: header, deploy.LabelBake: bake} {
			if v != "" {
				labels[k] = strings.ToValidUTF8(v, "\uFFFD")
			}
		}
		tg := withVerification(deploy.Target{}, swarm.ServiceSpec{Annotations: swarm.Annotations{Labels: labels},
			TaskTemplate: swarm.TaskSpec{Networks: oneNet}})
		if tg.HooksErr != nil {
			if tg.Probe != nil || tg.Bake != 0 || !strings.Contains(tg.HooksErr.Error(), "label updater.") {
				t.Fatalf("refused with %+v, %v", tg, tg.HooksErr)
			}
			return
		}
		p := tg.Probe
		if p == nil {
			t.Fatalf("no probe from %q", labels)
		}
		if p.Count < 1 || p.Count > deploy.MaxProbeCount || p.Interval < 100*time.Millisecond || p.Interval > time.Minute ||
			p.Timeout < 100*time.Millisecond || p.Timeout > time.Minute || len(p.Expect.Statuses) == 0 {
			t.Fatalf("accepted %+v from %q", p, labels)
		}
		if tg.Bake != 0 && (tg.Bake < deploy.MinBake || tg.Bake > deploy.MaxBake) {
			t.Fatalf("bake %s from %q", tg.Bake, bake)
		}
		if strings.ContainsAny(p.Header, "\r\n") {
			t.Fatalf("header %q could split a request", p.Header)
		}
		for _, addr := range []string{"10.0.1.7", "fd00::7"} {
			u, err := neturl.Parse(p.For(addr, "shop_web", "sha256:abc"))
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() != addr {
				t.Fatalf("template %q at %s makes %v, %v", p.URL, addr, u, err)
			}
		}
		// The updater probe job takes what the probe says back.
		if again, err := deploy.ParseExpect(p.Expect.String()); err != nil || !reflect.DeepEqual(again, p.Expect) {
			t.Fatalf("expect %q written as %q reads back as %+v, %v", expect, p.Expect.String(), again, err)
		}
	})
}

// A service without probe or bake labels costs its cycle nothing more:
// no allocation here (and no Docker call: probeNetwork asks only for
// services that name a probe network).
func TestVerificationIdleAllocs(t *testing.T) {
	spec := swarm.ServiceSpec{Annotations: swarm.Annotations{Labels: map[string]string{optIn: "true", "com.docker.stack.namespace": "shop"}},
		TaskTemplate: swarm.TaskSpec{Networks: oneNet}}
	var tg deploy.Target
	if n := testing.AllocsPerRun(100, func() { tg = withVerification(deploy.Target{}, spec) }); n != 0 || tg.Probe != nil || tg.HooksErr != nil {
		t.Errorf("%v allocations per unlabelled service, target %+v: want none", n, tg)
	}
	s := &Swarm{}
	if got := s.probeNetwork(t.Context(), tg); got.HooksErr != nil { // s has no client: a Docker call would panic
		t.Errorf("probeNetwork on an unlabelled service: %v", got.HooksErr)
	}
}
