package swarm

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/updater-dev/updater/internal/deploy"
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
			[]string{`updater.backup.env="PGHOST=db,PGUSER"`, `"PGUSER"`, "KEY=value"}},
		{"env key starts with digit", with(map[string]string{"updater.backup.env": "1PG=x"}),
			[]string{`updater.backup.env="1PG=x"`}},
		{"env key with dash", with(map[string]string{"updater.migrate.command": "up", "updater.migrate.env": "PG-HOST=db"}),
			[]string{`updater.migrate.env="PG-HOST=db"`}},
		{"env empty key", with(map[string]string{"updater.backup.env": "=x"}),
			[]string{`updater.backup.env="=x"`}},
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
		{"migrate image with newline", with(map[string]string{"updater.migrate.command": "up", "updater.migrate.image": "app\n:1"}),
			[]string{`updater.migrate.image="app\n:1"`}},
		{"backup image without command", map[string]string{"updater.backup.image": "pg:16"},
			[]string{`updater.backup.image="pg:16"`, "has no effect without updater.backup.command"}},
		{"backup env without command", map[string]string{"updater.backup.env": "A=1"},
			[]string{`updater.backup.env="A=1"`, "has no effect"}},
		{"backup mounts without command", map[string]string{"updater.backup.mounts": "backups:/backup"},
			[]string{`updater.backup.mounts="backups:/backup"`, "has no effect"}},
		{"migrate image without command", map[string]string{"updater.migrate.image": "app:1"},
			[]string{`updater.migrate.image="app:1"`, "has no effect without updater.migrate.command"}},
		{"migrate env without command", map[string]string{"updater.migrate.env": "A=1"},
			[]string{`updater.migrate.env="A=1"`, "has no effect"}},
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
		`updater.migrate.env="NOPE"`,
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
		{" A=1 ,\n\n B = 2", nil, `"B = 2"`},
		{"_X=", []string{"_X="}, ""},
		{"DSN=postgres://u@db/app?sslmode=disable", []string{"DSN=postgres://u@db/app?sslmode=disable"}, ""},
		{"A==b", []string{"A==b"}, ""},
		{"A", nil, `"A" is not KEY=value`},
		{"A=1,B", nil, `"B"`},
		{"9A=1", nil, `"9A=1"`},
		{"A.B=1", nil, `"A.B=1"`},
		{"=1", nil, `"=1"`},
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
