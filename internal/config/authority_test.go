package config

import (
	"reflect"
	"strings"
	"testing"
)

func TestHookAuthority(t *testing.T) {
	c, err := env{}.load()
	if err != nil {
		t.Fatal(err)
	}
	if c.HookMountRoots != nil || c.HookImages != nil || c.ReportHookLogs {
		t.Errorf("defaults %q %q %v, want nothing allowed and hook logs kept in the log", c.HookMountRoots, c.HookImages, c.ReportHookLogs)
	}
	c, err = env{
		"UPDATER_HOOK_MOUNT_ROOTS": " /srv/backups, shared_certs,/srv/backups ",
		"UPDATER_HOOK_IMAGES":      "ghcr.io/acme/pgdump, Registry.LAN:5000,postgres,index.docker.io",
		"UPDATER_REPORT_HOOK_LOGS": "true",
	}.load()
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"/srv/backups", "shared_certs"}; !reflect.DeepEqual(c.HookMountRoots, want) {
		t.Errorf("mount roots %q, want %q", c.HookMountRoots, want)
	}
	// Normalised as labels' images are (swarm compares imageref names).
	if want := []string{"ghcr.io/acme/pgdump", "registry.lan:5000", "docker.io/library/postgres", "docker.io"}; !reflect.DeepEqual(c.HookImages, want) {
		t.Errorf("images %q, want %q", c.HookImages, want)
	}
	if !c.ReportHookLogs {
		t.Error("UPDATER_REPORT_HOOK_LOGS=true not read")
	}
}

func TestHookAuthorityInvalid(t *testing.T) {
	for _, tt := range []struct{ name, value, want string }{
		{"UPDATER_HOOK_MOUNT_ROOTS", "/", "the Docker socket included"},
		{"UPDATER_HOOK_MOUNT_ROOTS", "/srv/../etc", "not a clean absolute path"},
		{"UPDATER_HOOK_MOUNT_ROOTS", "/srv/backups/", "not a clean absolute path"},
		{"UPDATER_HOOK_MOUNT_ROOTS", "srv/backups", "neither an absolute path nor a volume name"},
		{"UPDATER_HOOK_MOUNT_ROOTS", "my vol", "neither"},
		{"UPDATER_HOOK_IMAGES", "ghcr.io/acme/pgdump:16", "not a repository"},
		{"UPDATER_HOOK_IMAGES", "Ghcr.io/Acme", "not a repository"},
		{"UPDATER_HOOK_IMAGES", "bad_host:xx", "not a registry host"},
		{"UPDATER_REPORT_HOOK_LOGS", "yes please", "not a boolean"},
	} {
		t.Run(tt.name+"="+tt.value, func(t *testing.T) {
			_, err := env{tt.name: tt.value}.load()
			errs := errorsOf(t, err)
			if len(errs) != 1 || errs[0].Var != tt.name || !strings.Contains(errs[0].Reason, tt.want) {
				t.Errorf("errors %v, want one for %s with %q", errs, tt.name, tt.want)
			}
		})
	}
}
