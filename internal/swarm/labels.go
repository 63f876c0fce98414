package swarm

import (
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/kballard/go-shellquote"
	"github.com/moby/moby/api/types/swarm"

	"github.com/updater-dev/updater/internal/deploy"
	"github.com/updater-dev/updater/internal/imageref"
	"github.com/updater-dev/updater/internal/schedule"
	"github.com/updater-dev/updater/internal/tagpolicy"
)

// The labels that configure a service's hooks. Read here because they are
// part of the service object; what they mean is decided in deploy.
const (
	labelBackupImage    = "updater.backup.image"
	labelBackupCommand  = "updater.backup.command"
	labelBackupMounts   = "updater.backup.mounts"
	labelBackupEnv      = "updater.backup.env"
	labelBackupSchedule = "updater.backup.schedule"
	labelMigrateImage   = "updater.migrate.image"
	labelMigrateCommand = "updater.migrate.command"
	labelMigrateEnv     = "updater.migrate.env"
	labelHooksTimeout   = "updater.hooks.timeout"
	labelGroup          = "updater.group"
	labelWave           = "updater.wave"
	labelApprove        = "updater.approve"

	defaultHookTimeout = 5 * time.Minute
)

var (
	nameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`)
	envRE  = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
)

// parseHooks reads the hook labels. optIn is the opt-in label, which is
// the only other "updater." label a service may carry. Every problem is
// reported, each naming the label, its value and what would be valid.
func parseHooks(labels map[string]string, optIn string) (deploy.Hooks, error) {
	var errs []error
	bad := func(label, reason string) {
		if label == labelBackupEnv || label == labelMigrateEnv {
			// An env label carries passwords: its error names the entry
			// (parseEnv masks it), never the value.
			errs = append(errs, fmt.Errorf("label %s (value not shown, it may hold secrets): %s", label, reason))
			return
		}
		errs = append(errs, fmt.Errorf("label %s=%q: %s", label, labels[label], reason))
	}
	known := map[string]bool{optIn: true}
	for _, l := range []string{labelBackupImage, labelBackupCommand, labelBackupMounts, labelBackupEnv, labelBackupSchedule,
		labelMigrateImage, labelMigrateCommand, labelMigrateEnv, labelHooksTimeout, labelGroup, labelWave, labelApprove,
		deploy.LabelProbeURL, deploy.LabelProbeNetwork, deploy.LabelProbeExpect, deploy.LabelProbeCount,
		deploy.LabelProbeInterval, deploy.LabelProbeTimeout, deploy.LabelProbeHeader, deploy.LabelBake,
		labelWindow, labelFreeze, labelCooldown, labelBackupWindow, tagpolicy.LabelPolicy, tagpolicy.LabelPrerelease, tagpolicy.LabelOrder} {
		known[l] = true
	}
	var unknown []string
	for l := range labels {
		// The canary's are deploy.ParseCanary's to check (withCanary).
		canary := l == deploy.LabelCanary || strings.HasPrefix(l, deploy.LabelCanary+".")
		if strings.HasPrefix(l, "updater.") && !known[l] && !canary {
			unknown = append(unknown, l)
		}
	}
	sort.Strings(unknown)
	for _, l := range unknown {
		errs = append(errs, fmt.Errorf("label %s is not an updater label: use updater.backup.{image,command,mounts,env,schedule,window}, updater.migrate.{image,command,env}, updater.hooks.timeout, updater.group, updater.wave, updater.approve, updater.probe.{url,network,expect,count,interval,timeout,header}, updater.bake, updater.canary{,.window,.query,.max,.min,.interval,.failures,.on-error}, updater.window, updater.freeze, updater.cooldown or updater.policy{,.prerelease,.order}", l))
	}

	h := deploy.Hooks{Timeout: defaultHookTimeout, Group: labels[labelGroup], BackupSchedule: labels[labelBackupSchedule]}
	if v, ok := labels[labelHooksTimeout]; ok {
		d, err := time.ParseDuration(v)
		if err != nil || d < time.Second || d > 24*time.Hour {
			bad(labelHooksTimeout, `use a Go duration between 1s and 24h, like "5m"`)
		}
		h.Timeout = d
	}
	switch v, ok := labels[labelApprove]; {
	case !ok || v == "auto":
	case v == "manual":
		h.Approve = true
	default:
		// Not a boolean: "true" would read as "approve automatically" to
		// some and "needs approval" to others.
		bad(labelApprove, `use "manual" (a person approves each new digest) or "auto" (the default)`)
	}
	if h.Group != "" && !nameRE.MatchString(h.Group) {
		bad(labelGroup, "use letters, digits, '.', '_' and '-', starting with a letter or digit")
	}
	if v, ok := labels[labelWave]; ok {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		switch {
		case err != nil || n < 1 || n > 100:
			bad(labelWave, "use a whole number from 1 to 100: the members of a group deploy wave by wave, lowest first")
		case h.Group == "":
			bad(labelWave, "has no effect without "+labelGroup+": waves order the members of a group")
		default:
			h.Wave = n
		}
	}
	hook := func(image, command, env, mounts string) *deploy.Hook {
		if _, ok := labels[command]; !ok {
			for _, l := range []string{image, env, mounts} {
				if _, set := labels[l]; set && l != "" {
					bad(l, "has no effect without "+command+": set the command too")
				}
			}
			return nil
		}
		hk := &deploy.Hook{Image: labels[image]}
		var err error
		if hk.Command, err = parseCommand(labels[command]); err != nil {
			bad(command, err.Error())
		}
		if hk.Env, err = parseEnv(labels[env]); err != nil {
			bad(env, err.Error())
		}
		if hk.Mounts, err = parseMounts(labels[mounts]); err != nil {
			bad(mounts, err.Error())
		}
		if _, err := imageref.Parse(hk.Image); hk.Image != "" && err != nil {
			bad(image, "not an image reference: use repo[:tag][@digest], lower-case, with no whitespace")
		}
		return hk
	}
	h.Backup = hook(labelBackupImage, labelBackupCommand, labelBackupEnv, labelBackupMounts)
	h.Migrate = hook(labelMigrateImage, labelMigrateCommand, labelMigrateEnv, "")
	if h.BackupSchedule != "" {
		if h.Backup == nil {
			bad(labelBackupSchedule, "has no effect without "+labelBackupCommand+": set the command too")
		} else if _, err := schedule.Parse(h.BackupSchedule); err != nil {
			bad(labelBackupSchedule, err.Error()+`: use a 5-field cron expression like "0 * * * *" or a descriptor like "@hourly" or "@every 6h" (whole seconds, at least 1s)`)
		}
	}
	if err := errors.Join(errs...); err != nil {
		// A service that asked for approval keeps asking even with a bad
		// label elsewhere: it then fails only after a person approved.
		v, asked := labels[labelApprove]
		return deploy.Hooks{Approve: asked && v != "auto"}, fmt.Errorf("invalid hook labels: %w", err)
	}
	return h, nil
}

// parseCommand accepts a JSON array (exec form, as in a Dockerfile) or a
// shell-quoted string, split like a shell would split it but without
// expanding anything: $VARS reach the job as written, and no shell runs
// unless the command names one.
func parseCommand(v string) ([]string, error) {
	v = strings.TrimSpace(v)
	var args []string
	if strings.HasPrefix(v, "[") {
		if err := json.Unmarshal([]byte(v), &args); err != nil {
			return nil, fmt.Errorf(`not a JSON array of strings (%v): use ["cmd", "arg"] or cmd arg`, err)
		}
	} else {
		var err error
		if args, err = shellquote.Split(v); err != nil {
			return nil, fmt.Errorf(`cannot split it into words (%v): balance the quotes, like sh -c 'pg_dump -f /backup/x'`, err)
		}
	}
	if len(args) == 0 || args[0] == "" {
		return nil, errors.New(`empty command: name a program, like pg_dump -f /backup/db.dump`)
	}
	for _, a := range args {
		if strings.ContainsRune(a, 0) {
			// The kernel ends an argument at NUL: the job would run
			// something other than what the label says.
			return nil, fmt.Errorf("argument %q holds a NUL byte, which no program can receive", a)
		}
	}
	return args, nil
}

// parseEnv reads KEY=value entries separated by newlines or commas. Its
// errors name an entry by its place and key, the value masked: env labels
// carry database passwords, and an error goes to Slack, Rollbar, the
// Swarm record and the API.
func parseEnv(v string) ([]string, error) {
	var out []string
	for i, e := range strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == '\n' }) {
		e = strings.TrimSpace(e)
		if e == "" {
			continue
		}
		k, _, ok := strings.Cut(e, "=")
		if !ok {
			// No key at all: this may be the tail of a value that held a
			// comma (a password), so none of it is shown.
			return nil, fmt.Errorf("entry %d (%s) is not KEY=value: use KEY=value pairs separated by commas, keys of letters, digits and _; a value cannot hold a comma or newline", i+1, masked)
		}
		if !envRE.MatchString(k) {
			return nil, fmt.Errorf("entry %d %q is not KEY=value: use KEY=value pairs separated by commas, keys of letters, digits and _", i+1, k+"="+masked)
		}
		if strings.ContainsRune(e, 0) {
			return nil, fmt.Errorf("entry %d %q holds a NUL byte, which no environment can carry", i+1, k+"="+masked)
		}
		out = append(out, e)
	}
	return out, nil
}

// masked stands for a value an error does not show.
const masked = "***"

// parseMounts reads source:target[:ro] entries separated by commas. A
// source is a volume name, or an absolute host path for a bind mount.
func parseMounts(v string) ([]deploy.Mount, error) {
	var out []deploy.Mount
	for _, e := range strings.Split(v, ",") {
		e = strings.TrimSpace(e)
		if e == "" {
			continue
		}
		parts := strings.Split(e, ":")
		if len(parts) < 2 || len(parts) > 3 || len(parts) == 3 && parts[2] != "ro" && parts[2] != "rw" {
			return nil, fmt.Errorf("entry %q: use volume:/path or /host/path:/path, optionally followed by :ro", e)
		}
		m := deploy.Mount{Source: parts[0], Target: parts[1], ReadOnly: len(parts) == 3 && parts[2] == "ro"}
		if !cleanAbs(m.Target) {
			return nil, fmt.Errorf("entry %q: the target %q must be a clean absolute path like /backup", e, m.Target)
		}
		if m.Target == "/" || kernelPath(m.Target) {
			return nil, fmt.Errorf("entry %q: the target %q would cover the job's own / or kernel filesystems (/proc, /sys, /dev): use a directory of its own, like /backup", e, m.Target)
		}
		if strings.HasPrefix(m.Source, "/") {
			if !cleanAbs(m.Source) || m.Source == "/" {
				return nil, fmt.Errorf("entry %q: the host path %q must be a clean absolute path other than /", e, m.Source)
			}
			if kernelPath(m.Source) {
				// /proc/self/root alone is the host's /.
				return nil, fmt.Errorf("entry %q: the host path %q is in a kernel filesystem (/proc, /sys, /dev), not data: use a directory like /srv/backups", e, m.Source)
			}
		} else if !nameRE.MatchString(m.Source) {
			return nil, fmt.Errorf("entry %q: %q is neither a volume name (letters, digits, '.', '_', '-') nor an absolute host path", e, m.Source)
		}
		out = append(out, m)
	}
	return out, nil
}

// cleanAbs says whether p is an absolute path as path.Clean writes it,
// with no control character in it and no space at either end: "/backup "
// would be a directory other than the /backup the job writes to.
func cleanAbs(p string) bool {
	return strings.HasPrefix(p, "/") && path.Clean(p) == p && strings.TrimSpace(p) == p && !strings.ContainsFunc(p, unsafePathRune)
}

// unsafePathRune is a character no path in a label may hold: NUL ends a
// path early; a newline or escape in one is a mistake or a trick.
func unsafePathRune(r rune) bool { return unicode.IsControl(r) }

// kernelPath says whether p is in /proc, /sys or /dev: never data to
// back up, and a mount over one hides what the job itself needs.
func kernelPath(p string) bool {
	for _, k := range []string{"/proc", "/sys", "/dev"} {
		if p == k || strings.HasPrefix(p, k+"/") {
			return true
		}
	}
	return false
}

// Authority is what the operator lets hook labels ask of the Docker
// daemon. Labels are written by whoever writes stack files, who may have
// less power than the socket the updater holds (a Portainer user, a GitOps
// repository with policy checks): without this a label could bind
// /var/run/docker.sock into a job and so be root on the node. It comes from
// the updater's environment, never from labels.
type Authority struct {
	// MountRoots are the host paths hook jobs may bind (each with what is
	// below it), and the named volumes of other stacks they may mount
	// (UPDATER_HOOK_MOUNT_ROOTS). None by default: only named volumes of
	// the service's own stack.
	MountRoots []string
	// Images are the repositories and registry hosts hook images may come
	// from besides the service's own repository (UPDATER_HOOK_IMAGES).
	Images []string
}

// The variables an operator allows more with, named in every refusal.
const (
	envMountRoots = "UPDATER_HOOK_MOUNT_ROOTS"
	envImages     = "UPDATER_HOOK_IMAGES"
)

// check refuses the hooks that ask for more than a allows, each refusal
// naming the label, the entry and the variable that would allow it. stack
// is the service's stack ("" for a service outside one) and image its
// image: its own repository is always allowed.
func (a Authority) check(h deploy.Hooks, stack, image string) error {
	var errs []error
	for _, c := range []struct {
		hk           *deploy.Hook
		image, mount string
	}{{h.Backup, labelBackupImage, labelBackupMounts}, {h.Migrate, labelMigrateImage, ""}} {
		if c.hk == nil {
			continue
		}
		if c.hk.Image != "" && !a.image(c.hk.Image, image) {
			errs = append(errs, fmt.Errorf("label %s=%q: the image is not from the service's own repository (%s) nor from one %s lists: add its repository or registry host to %s to allow it",
				c.image, c.hk.Image, imageref.Repository(image), envImages, envImages))
		}
		for _, m := range c.hk.Mounts {
			if err := a.mount(m, stack); err != nil {
				errs = append(errs, fmt.Errorf("label %s entry %q: %w", c.mount, mountEntry(m), err))
			}
		}
	}
	return errors.Join(errs...)
}

// image reports whether ref is in the service's own repository or in one
// the operator listed, by repository or by registry host.
func (a Authority) image(ref, own string) bool {
	r, err := imageref.Parse(ref)
	if err != nil {
		return false
	}
	if r.Name() == imageref.Repository(own) {
		return true
	}
	for _, allowed := range a.Images {
		if allowed == r.Name() || allowed == r.Host {
			return true
		}
	}
	return false
}

// mount allows a host path only below a listed root (by whole path
// components: /srv/backups allows /srv/backups/db, not /srv/backupsX), and
// a named volume of the service's own stack, or one listed by name.
func (a Authority) mount(m deploy.Mount, stack string) error {
	if strings.HasPrefix(m.Source, "/") {
		for _, root := range a.MountRoots {
			if strings.HasPrefix(root, "/") && (m.Source == root || strings.HasPrefix(m.Source, strings.TrimSuffix(root, "/")+"/")) {
				return nil
			}
		}
		return fmt.Errorf("the host path %s is under no root %s lists (%s): add it, or a directory above it, to %s to allow it",
			m.Source, envMountRoots, listed(a.MountRoots), envMountRoots)
	}
	// docker stack deploy names a stack's volumes <stack>_<name>.
	if stack != "" && strings.HasPrefix(m.Source, stack+"_") || slices.Contains(a.MountRoots, m.Source) {
		return nil
	}
	own := "the service is in no stack"
	if stack != "" {
		own = "the service's stack volumes are " + stack + "_*"
	}
	return fmt.Errorf("the volume %s is not of the service's own stack (%s): add the volume's name to %s to allow it",
		m.Source, own, envMountRoots)
}

func listed(items []string) string {
	if len(items) == 0 {
		return "none set"
	}
	return strings.Join(items, ",")
}

func mountEntry(m deploy.Mount) string {
	s := m.Source + ":" + m.Target
	if m.ReadOnly {
		s += ":ro"
	}
	return s
}

// hooks reads a service's hook labels and holds them to what the operator
// allows. On any problem it returns no hooks but the approval a service
// asked for, like parseHooks, so a refused service never deploys without
// its hooks and its other services carry on.
func hooks(labels map[string]string, optIn, stack, image string, a Authority) (deploy.Hooks, error) {
	h, err := parseHooks(labels, optIn)
	if err != nil {
		return h, err
	}
	if err := a.check(h, stack, image); err != nil {
		return deploy.Hooks{Approve: h.Approve}, fmt.Errorf("hook labels ask for more than the operator allows: %w", err)
	}
	return h, nil
}

// verification reads a service's probe and bake labels (deploy parses
// them, verify.go). nets are the networks the service's tasks are attached
// to: a probe reaches the tasks on one of them, so a service on none can't
// be probed, and that is a label error found now, before anything runs.
// Which network updater.probe.network names is checked by probeNetwork,
// only for the services that set it.
func verification(labels map[string]string, nets []swarm.NetworkAttachmentConfig) (*deploy.Probe, time.Duration, error) {
	var errs []error
	p, err := deploy.ParseProbe(labels)
	if err != nil {
		errs = append(errs, err)
	}
	if p != nil && len(nets) == 0 {
		errs = append(errs, fmt.Errorf("label %s=%q: the service is attached to no network, and its tasks are probed on one: attach it to a network (networks: in the stack file) or remove the probe labels",
			deploy.LabelProbeURL, deploy.MaskTemplate(labels[deploy.LabelProbeURL])))
	}
	bake, err := deploy.ParseBake(labels[deploy.LabelBake])
	if err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, 0, fmt.Errorf("invalid probe or bake labels: %w", err)
	}
	return p, bake, nil
}

// withVerification is t with its probe and bake read from spec's labels;
// a bad one joins t's label errors, and a service with any label error
// gets neither: it is not deployed.
func withVerification(t deploy.Target, spec swarm.ServiceSpec) deploy.Target {
	p, bake, err := verification(spec.Labels, spec.TaskTemplate.Networks)
	if t.HooksErr = errors.Join(t.HooksErr, err); t.HooksErr == nil {
		t.Probe, t.Bake = p, bake
	}
	return t
}
