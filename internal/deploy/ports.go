package deploy

import (
	"context"
	"time"
)

// The interfaces the pipeline needs from the outside world. They are
// declared here, by their consumer, and kept small so tests can fake them
// with a few function fields.

// Lister finds the services that opted in to being watched.
type Lister interface {
	// List returns every watched service, read in one call so a cycle sees
	// one consistent picture of the swarm.
	List(ctx context.Context) ([]Target, error)
}

// Services changes a service and reports how a change is going.
type Services interface {
	// Update sets the service's image to image (already pinned to a digest),
	// sending creds so every node can pull it. It retries Swarm's "update
	// out of sequence" itself; any error means the spec was not changed.
	Update(ctx context.Context, t Target, image string, creds Credentials) error
	// Rollout returns the service's update state and tasks as they are now.
	Rollout(ctx context.Context, serviceID string) (Rollout, error)
	// Rollback asks Swarm to return the service to its previous spec.
	Rollback(ctx context.Context, serviceID string) error
}

// Registry tells what a tag points to and how to pull it.
type Registry interface {
	// Digest is the digest Docker would pin for ref right now.
	Digest(ctx context.Context, ref string) (string, error)
	// Credentials are the pull credentials for ref's registry, zero when
	// anonymous.
	Credentials(ctx context.Context, ref string) (Credentials, error)
	// Labels are the labels of the image ref (pinned to a digest) names.
	// For an index it reads the linux/amd64 image, or else the first.
	Labels(ctx context.Context, ref string) (map[string]string, error)
	// Tags lists the tags of ref's repository (every page).
	Tags(ctx context.Context, ref string) ([]string, error)
}

// TagPolicy picks the tag a service follows among its repository's tags
// (updater.policy).
type TagPolicy interface {
	// Pick is the highest tag the policy allows; false when none is.
	Pick(tags []string) (string, bool)
	// String is the policy in its label's form: services of one
	// repository and policy share one listing per cycle.
	String() string
}

// Ledger remembers digests that failed, somewhere that outlives the
// updater process (Swarm itself in production).
type Ledger interface {
	// Failed returns the failed digests of every service: service ID to a
	// set of digests.
	Failed(ctx context.Context) (map[string]map[string]bool, error)
	MarkFailed(ctx context.Context, serviceID, digest, reason string) error
	// Forget drops a service's failed digests once it has deployed a newer
	// one, so the record does not grow without bound.
	Forget(ctx context.Context, serviceID string) error
}

// Journal records deploys in flight, so an updater that dies mid-deploy
// finds them on restart and reports how they ended, exactly once.
type Journal interface {
	Begin(ctx context.Context, r Release) error
	// Reached notes on r's record that it got to stage (read back as
	// Release.Stage).
	Reached(ctx context.Context, r Release, stage Stage) error
	End(ctx context.Context, r Release) error
	InFlight(ctx context.Context) ([]Release, error)
}

// Sweeper finds and removes the records of services that are gone.
type Sweeper interface {
	// Recorded are the IDs of the services the records name.
	Recorded(ctx context.Context) ([]string, error)
	// ForgetService removes every record about the service.
	ForgetService(ctx context.Context, serviceID string) error
}

// Schedules runs the scheduled backups (updater.backup.schedule) of the
// services it was last told of.
type Schedules interface {
	Sync(targets []Target)
}

// Reporter is told about every deploy event. It must not block: a slow
// notifier is never a reason for a deploy to wait.
type Reporter interface {
	Report(e Event)
}

// Rollout is a service's update progress as Swarm reports it.
type Rollout struct {
	// Image is the image the spec carries now.
	Image string
	// UpdateState is UpdateStatus.State: updating, paused, completed,
	// rollback_started, rollback_paused, rollback_completed, or "" when
	// Swarm has not (yet) recorded one.
	UpdateState   string
	UpdateMessage string
	// UpdateStarted is when Swarm began that update or rollback; zero when
	// unknown. A rollback that began before a deploy is not the deploy's.
	UpdateStarted time.Time
	// Canary is true while the spec is in a canary's form
	// (Canaries.Canary, not promoted or reverted since).
	Canary bool
	// Desired is how many tasks should run (replicas, or one per eligible
	// node for a global service).
	Desired int
	// Tasks are the service's tasks Swarm still keeps, old ones included:
	// a failed task of the new version is the best explanation of a failure.
	Tasks []Task
}

// Task is one task of a service.
type Task struct {
	ID string
	// Node is the hostname of the node the task is on (its ID when the
	// name is unknown), "" until Swarm assigns one: reports name it.
	Node  string
	Image string
	State string // Swarm task state: new, pending, …, starting, running, failed, rejected…
	// Desired is the state Swarm wants the task in: "running" for the
	// tasks that make up the service now, "shutdown" for replaced ones.
	Desired string
	Err     string
	Since   time.Time
}
