// Package deploy is the domain of updater: what a watched service is, what a
// release is, and the pipeline that moves one to the other. Every decision
// lives here; the packages that talk to Docker and the registry only carry
// data in and out through the small interfaces declared below, so this
// package imports nothing but the standard library.
package deploy

import (
	"strings"
	"time"
)

// Target is one watched Swarm service as the updater sees it in one cycle.
type Target struct {
	ID    string
	Name  string
	Stack string // com.docker.stack.namespace, "" when not deployed as a stack
	// Image is the image exactly as the service spec carries it, for example
	// "127.0.0.1:5000/app:latest@sha256:…".
	Image string
	// StartFirst and RollbackOnFailure describe the service's update_config;
	// without them health-gated promotion proves less, and we say so.
	StartFirst        bool
	RollbackOnFailure bool
	// Healthcheck is true when the spec defines a health check; false means
	// "none in the spec", the image may still carry one.
	Healthcheck bool
	// Hooks are read from the service's labels; HooksErr says why they
	// could not be, and then the service is not deployed.
	Hooks Hooks
	// Probe and Bake are what the rollout must also pass once Swarm says
	// it is done (verify.go): nil and 0 when not labelled.
	Probe *Probe
	Bake  time.Duration
	// Canary is its metric-gated canary (updater.canary, canary.go); the
	// zero Canary is none.
	Canary Canary
	// Policy is the release policy that may hold a new digest (its
	// deploy windows and freezes, policy.go), Freeze its freezes alone
	// (what holds a person's deploy too): nil when none applies. Cooldown
	// is how long a digest must stay on the tag before it deploys; 0: none.
	Policy, Freeze Hold
	Cooldown       time.Duration
	// BackupWindow, when set (updater.backup.window), is when its
	// scheduled backups may run; deploys' own backups are not held by it.
	BackupWindow Hold
	// Tags is the service's tag policy (updater.policy: semver:…,
	// regex:…): nil follows the tag the spec names. Follow is the tag the
	// policy picked this cycle (repo:tag), which Ref then is.
	Tags   TagPolicy
	Follow string
	// HooksErr says why its labels (hooks, probe, bake) could not be
	// read; the service is then not deployed.
	HooksErr error
}

// release is a deploy of t from the digest it runs to to, named id.
func (t Target) release(id, to string, started time.Time) Release {
	return Release{ID: id, ServiceID: t.ID, ServiceName: t.Name, Stack: t.Stack, Ref: t.Ref(), From: t.Digest(), To: to, Started: started}
}

// Ref is the tag the service tracks: the image without its digest, or
// the tag its policy picked this cycle.
func (t Target) Ref() string {
	if t.Follow != "" {
		return t.Follow
	}
	ref, _ := SplitImage(t.Image)
	return ref
}

// Digest is the digest pinned in the service spec, "" when none is.
func (t Target) Digest() string {
	_, d := SplitImage(t.Image)
	return d
}

// SplitImage splits "repo:tag@sha256:…" into "repo:tag" and "sha256:…".
// An image with neither tag nor digest tracks "latest", as Docker does; one
// pinned to a digest without a tag tracks nothing, and ref comes back
// without a tag (see Tagged).
func SplitImage(image string) (ref, digest string) {
	ref, digest, _ = strings.Cut(image, "@")
	if !Tagged(ref) && digest == "" {
		ref += ":latest"
	}
	return ref, digest
}

// Tagged reports whether ref names a tag ("repo:tag"), as opposed to a bare
// repository; the colon of a registry port does not count.
func Tagged(ref string) bool {
	name := ref
	if i := strings.LastIndex(name, "/"); i >= 0 {
		name = name[i+1:]
	}
	return strings.Contains(name, ":")
}

// Pin is the image reference an update sends: the tracked tag pinned to a
// digest, so every node runs exactly the bytes the registry showed us.
func Pin(ref, digest string) string { return ref + "@" + digest }

// Credentials are what a registry needs to let a node pull an image. They
// are secrets: never log them or put them in an error.
type Credentials struct {
	ServerAddress string
	Username      string
	Password      string
	IdentityToken string
	RegistryToken string
}

// Short abbreviates a digest for people: "sha256:0123456789ab".
func Short(digest string) string {
	if len(digest) > 19 {
		return digest[:19]
	}
	return digest
}
