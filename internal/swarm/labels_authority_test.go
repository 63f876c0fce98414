package swarm

import (
	"reflect"
	"strings"
	"testing"

	"github.com/updater-dev/updater/internal/deploy"
	"github.com/updater-dev/updater/internal/imageref"
)

const ownImage = "registry.example.com/shop/web:v1@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"

// Each hook label outside what the operator allows is refused, naming the
// label, the entry and the variable that would allow it; what is inside
// is kept as written.
func TestAuthority(t *testing.T) {
	ops := Authority{MountRoots: []string{"/srv/backups", "/var/lib/site/", "shared_certs"}, Images: []string{"ghcr.io", "docker.io/library/postgres"}}
	tests := []struct {
		name   string
		a      Authority
		stack  string
		labels map[string]string
		want   []string // substrings of the refusal; none: allowed
	}{
		{"docker socket", Authority{}, "shop", map[string]string{labelBackupMounts: "/var/run/docker.sock:/var/run/docker.sock"},
			[]string{`label updater.backup.mounts entry "/var/run/docker.sock:/var/run/docker.sock"`, "UPDATER_HOOK_MOUNT_ROOTS lists (none set)", "to UPDATER_HOOK_MOUNT_ROOTS to allow it"}},
		{"docker socket under another root", ops, "shop", map[string]string{labelBackupMounts: "/var/run/docker.sock:/sock"},
			[]string{"/var/run/docker.sock", "UPDATER_HOOK_MOUNT_ROOTS lists (/srv/backups,/var/lib/site/,shared_certs)"}},
		{"/etc", ops, "shop", map[string]string{labelBackupMounts: "/etc:/host-etc:ro"}, []string{`entry "/etc:/host-etc:ro"`, "UPDATER_HOOK_MOUNT_ROOTS"}},
		{"/root/.ssh", ops, "shop", map[string]string{labelBackupMounts: "/root/.ssh:/keys:ro"}, []string{"/root/.ssh", "UPDATER_HOOK_MOUNT_ROOTS"}},
		{"/root", ops, "shop", map[string]string{labelBackupMounts: "/root:/keys"}, []string{"/root", "UPDATER_HOOK_MOUNT_ROOTS"}},
		{"/var/lib/docker", ops, "shop", map[string]string{labelBackupMounts: "/var/lib/docker:/d"}, []string{"/var/lib/docker", "UPDATER_HOOK_MOUNT_ROOTS"}},
		{"a sibling named like a root", ops, "shop", map[string]string{labelBackupMounts: "/srv/backupsX:/backup"}, []string{"/srv/backupsX"}},
		{"the parent of a root", ops, "shop", map[string]string{labelBackupMounts: "/srv:/backup"}, []string{"the host path /srv is under no root"}},
		{"out of a root by ..", ops, "shop", map[string]string{labelBackupMounts: "/srv/backups/../../etc:/backup"}, []string{"clean absolute path"}},
		{"another stack's volume", ops, "shop", map[string]string{labelBackupMounts: "billing_db:/backup"},
			[]string{`entry "billing_db:/backup"`, "stack volumes are shop_*", "add the volume's name to UPDATER_HOOK_MOUNT_ROOTS"}},
		{"a volume outside every stack", Authority{}, "shop", map[string]string{labelBackupMounts: "backups:/backup"}, []string{"the volume backups"}},
		{"a volume of a service in no stack", Authority{}, "", map[string]string{labelBackupMounts: "shop_data:/backup"}, []string{"the service is in no stack"}},
		{"a stack named like a prefix", Authority{}, "sho", map[string]string{labelBackupMounts: "shop_data:/backup"}, []string{"stack volumes are sho_*"}},
		{"image of another repository", Authority{}, "shop", map[string]string{labelBackupImage: "registry.example.com/shop/tools:1"},
			[]string{`label updater.backup.image="registry.example.com/shop/tools:1"`, "own repository (registry.example.com/shop/web)", "to UPDATER_HOOK_IMAGES to allow it"}},
		{"migrate image from Docker Hub", ops, "shop", map[string]string{labelMigrateCommand: "up", labelMigrateImage: "alpine:3"},
			[]string{`label updater.migrate.image="alpine:3"`, "UPDATER_HOOK_IMAGES"}},
		{"image from a host named like an allowed one", ops, "shop", map[string]string{labelBackupImage: "ghcr.io.evil.com/x:1"}, []string{"UPDATER_HOOK_IMAGES"}},

		{"an allowed root", ops, "shop", map[string]string{labelBackupMounts: "/srv/backups:/backup"}, nil},
		{"below an allowed root", ops, "shop", map[string]string{labelBackupMounts: "/srv/backups/db:/backup, /var/lib/site/media:/media:ro"}, nil},
		{"the stack's own volume", Authority{}, "shop", map[string]string{labelBackupMounts: "shop_backups:/backup"}, nil},
		{"a listed volume", ops, "shop", map[string]string{labelBackupMounts: "shared_certs:/certs:ro"}, nil},
		{"the service's own repository", Authority{}, "shop", map[string]string{labelBackupImage: "registry.example.com/shop/web:v0"}, nil},
		{"the service's own image by default", Authority{}, "shop", map[string]string{}, nil},
		{"an allowed host", ops, "shop", map[string]string{labelBackupImage: "ghcr.io/acme/pgdump:16"}, nil},
		{"an allowed repository", ops, "shop", map[string]string{labelBackupImage: "postgres:16"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			labels := map[string]string{optIn: "true", labelBackupCommand: "pg_dump", labelApprove: "manual"}
			for k, v := range tt.labels {
				labels[k] = v
			}
			h, err := hooks(labels, optIn, tt.stack, ownImage, tt.a)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				want, _ := parseHooks(labels, optIn)
				if !reflect.DeepEqual(h, want) {
					t.Errorf("hooks = %s, want them as parsed: %s", dump(h), dump(want))
				}
				return
			}
			if err == nil {
				t.Fatalf("hooks = %s, want a refusal", dump(h))
			}
			if !reflect.DeepEqual(h, deploy.Hooks{Approve: true}) {
				t.Errorf("hooks = %s with the refusal, want none but the approval asked for", dump(h))
			}
			for _, s := range tt.want {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("refusal %q lacks %q", err, s)
				}
			}
		})
	}
}

// One refused service does not stop the others: List gives each its own
// verdict.
func TestListRefusesOnlyTheServiceThatAsksTooMuch(t *testing.T) {
	e := newEngine(t)
	bad, good := appSpec("shop_bad", appRepo+":v1@"+digest1), appSpec("shop_good", appRepo+":v1@"+digest1)
	bad.Labels[labelBackupCommand], bad.Labels[labelBackupMounts] = "x", "/var/run/docker.sock:/var/run/docker.sock"
	good.Labels[labelBackupCommand], good.Labels[labelBackupMounts] = "x", "shop_backups:/backup"
	e.addService("s1", bad)
	e.addService("s2", good)
	ts, err := e.client(t, Config{Label: optIn}).List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	verdicts := map[string]error{}
	for _, tg := range ts {
		verdicts[tg.Name] = tg.HooksErr
	}
	if err := verdicts["shop_bad"]; err == nil || !strings.Contains(err.Error(), "UPDATER_HOOK_MOUNT_ROOTS") {
		t.Errorf("shop_bad: %v, want refused naming UPDATER_HOOK_MOUNT_ROOTS", err)
	}
	if err, ok := verdicts["shop_good"]; !ok || err != nil {
		t.Errorf("shop_good: listed=%v, %v; want it listed with its hooks", ok, err)
	}
}

// An env label's values never appear in its error, whatever is wrong
// with it: they are database passwords, and the error goes to Slack,
// Rollbar, the Swarm record and the API.
func TestEnvErrorsMaskValues(t *testing.T) {
	const pw = "s3cr3t-pa55"
	for _, v := range []string{
		"PGPASSWORD=" + pw + ",BROKEN",
		"DSN=postgres://u:" + pw + "@db, x",
		"DSN=postgres://u:pa," + pw + "@db",
		"PG-PASSWORD=" + pw,
		"PGPASSWORD=" + pw + "\x00",
		"=" + pw,
		pw,
	} {
		for _, lbl := range []map[string]string{
			{labelBackupCommand: "x", labelBackupEnv: v},
			{labelMigrateCommand: "x", labelMigrateEnv: v},
			{labelBackupEnv: v}, // no command: no effect
		} {
			_, err := parseHooks(lbl, optIn)
			if err == nil {
				t.Errorf("labels %q accepted", lbl)
				continue
			}
			if strings.Contains(err.Error(), pw) || strings.Contains(err.Error(), "pa55") {
				t.Errorf("error for %q shows the password: %v", lbl, err)
			}
			if !strings.Contains(err.Error(), "env (value not shown") {
				t.Errorf("error %q does not name the label", err)
			}
		}
	}
}

// FuzzAuthority: whatever the labels and the allow-list, accepted hooks
// bind only host paths below a listed root and volumes of the stack or
// listed, and run images of the service's repository or listed ones; a
// refusal leaves no hooks and names the variable.
func FuzzAuthority(f *testing.F) {
	f.Add("/var/run/docker.sock:/var/run/docker.sock", "", "/srv", "", "shop")
	f.Add("/srv/backups/../..:/x", "", "/srv/backups", "", "shop")
	f.Add("/srv/backupsX:/backup", "ghcr.io/x:1", "/srv/backups", "ghcr.io", "shop")
	f.Add("shop_data:/backup, other_data:/o", "registry.example.com/shop/web:v2", "other_data", "", "shop")
	f.Add("shop_data:/backup", "", "", "", "")
	f.Add("/srv/b:/backup", "postgres:16", "/srv/", "docker.io/library/postgres", "sh")
	f.Fuzz(func(t *testing.T, mounts, image, roots, images, stack string) {
		a := Authority{MountRoots: strings.Split(roots, ","), Images: strings.Split(images, ",")}
		labels := map[string]string{labelBackupCommand: "x", labelBackupMounts: strings.ToValidUTF8(mounts, "?")}
		if image != "" {
			labels[labelBackupImage] = strings.ToValidUTF8(image, "?")
		}
		h, err := hooks(labels, optIn, stack, ownImage, a)
		if err != nil {
			if !reflect.DeepEqual(h, deploy.Hooks{}) {
				t.Fatalf("hooks %s with the error %v", dump(h), err)
			}
			if _, perr := parseHooks(labels, optIn); perr == nil && !strings.Contains(err.Error(), "UPDATER_HOOK_") {
				t.Fatalf("refusal %q names no variable", err)
			}
			return
		}
		if hk := h.Backup; hk.Image != "" {
			r, _ := imageref.Parse(hk.Image)
			if r.Name() != imageref.Repository(ownImage) && !contains(a.Images, r.Name()) && !contains(a.Images, r.Host) {
				t.Fatalf("accepted the image %q with %q allowed", hk.Image, a.Images)
			}
		}
		for _, m := range h.Backup.Mounts {
			if !strings.HasPrefix(m.Source, "/") {
				if !(stack != "" && strings.HasPrefix(m.Source, stack+"_")) && !contains(a.MountRoots, m.Source) {
					t.Fatalf("accepted the volume %q of stack %q with %q allowed", m.Source, stack, a.MountRoots)
				}
				continue
			}
			ok := false
			for _, r := range a.MountRoots {
				r = strings.TrimSuffix(r, "/")
				if r != "" && strings.HasPrefix(r, "/") && (m.Source == r || strings.HasPrefix(m.Source, r+"/")) {
					ok = true
				}
			}
			if !ok || !cleanAbs(m.Source) {
				t.Fatalf("accepted the host path %q with roots %q", m.Source, a.MountRoots)
			}
		}
	})
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
