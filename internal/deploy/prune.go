package deploy

import (
	"context"
	"slices"
	"strings"
	"time"
)

// Pruner removes the images deploys made unused, on every node of the
// swarm: continuous deploys leave one image per version on every node
// that ran it, and nothing else removes them.
type Pruner interface {
	// Promoted returns the digests the service was last recorded as
	// promoted to, newest first; nil when there is no record.
	Promoted(ctx context.Context, serviceID string) ([]string, error)
	// SetPromoted replaces that record.
	SetPromoted(ctx context.Context, serviceID string, digests []string) error
	// Prune removes, on every node, the images of j.Repo that j.Keep does
	// not list. It never removes an image a container on the node runs,
	// nor one any service's spec or previous spec pins: the version a
	// `docker service rollback` returns to must not need a pull. A node
	// that could not prune is a result with Err set; the error is for a
	// job that could not run at all.
	Prune(ctx context.Context, j PruneJob, creds Credentials) ([]Pruned, error)
}

// Pruning configures removing the images a deploy made unused.
type Pruning struct {
	// Nodes prunes; nil turns pruning off.
	Nodes Pruner
	// Keep is how many versions before the current one stay on the nodes,
	// so that a rollback to them starts without a pull.
	Keep int
	// Image is the image the prune job runs on every node: the updater's
	// own, which every node must have or be able to pull.
	Image string
	// Timeout bounds the job; 0 means DefaultPruneTimeout.
	Timeout time.Duration
}

// DefaultPruneTimeout bounds a prune job when Pruning.Timeout is 0. A node
// that does not finish in time (it is down, say) is pruned after a later
// deploy.
const DefaultPruneTimeout = 2 * time.Minute

// PruneJob is one prune, on every node.
type PruneJob struct {
	// Name is unique and says whose job it is: "web-prune-3f2a9c81".
	Name string
	// Service is the ID of the service whose deploy made images unused.
	Service string
	// Repo is the repository whose images are pruned: the service's image
	// without tag and digest.
	Repo    string
	Image   string   // the image the job runs
	Keep    []string // digests that stay
	Timeout time.Duration
}

// Pruned is what pruning did on one node.
type Pruned struct {
	Node    string // hostname
	Removed int    // images removed
	Bytes   int64  // disk space given back, about (layers shared with kept images stay)
	Err     string // why the node could not prune, "" when it did
}

// prune runs after the deploys that succeeded among evs, within the cycle:
// a deploy of the same repository starting while a node prunes could lose
// its freshly pulled image. Pruning never changes a deploy's outcome; what
// it did, or why it could not, is logged.
func (p *Pipeline) prune(ctx context.Context, evs ...Event) {
	if p.Pruning.Nodes == nil {
		return
	}
	for _, ev := range evs {
		if ev.Kind != Succeeded || ev.Release.To == "" || ev.Release.To == ev.Release.From || ctx.Err() != nil {
			continue
		}
		p.pruneAfter(ctx, ev.Release)
	}
}

func (p *Pipeline) pruneAfter(ctx context.Context, rel Release) {
	pr := p.Pruning
	repo := Repository(rel.Ref)
	log := p.Log.With("service", rel.ServiceName, "image", repo, "step", "prune", "deploy_id", rel.ID)
	before, err := pr.Nodes.Promoted(ctx, rel.ServiceID)
	if err != nil {
		// Swarm's own pins (the spec and the previous spec) still keep
		// the current version and the one a rollback returns to.
		log.Warn("read the versions kept for rollback; keeping only what Swarm pins", "err", err)
	}
	keep := kept(rel, before, pr.Keep)
	if err := pr.Nodes.SetPromoted(ctx, rel.ServiceID, keep); err != nil {
		log.Warn("record the versions kept for rollback", "err", err)
	}
	creds, err := p.Registry.Credentials(ctx, pr.Image)
	if err != nil {
		log.Warn("prune skipped: get registry credentials for the prune image", "err", err)
		return
	}
	timeout := pr.Timeout
	if timeout <= 0 {
		timeout = DefaultPruneTimeout
	}
	// Runs of the same repository may be deploying beside this one: their
	// digests stay (what they deploy, and what they would return to), and
	// no run of the repository starts until the prune has ended.
	job := slices.Clone(keep)
	f := flightOf(ctx)
	p.mu.Lock()
	for _, o := range p.runs.live {
		if o == f || !slices.ContainsFunc(o.refs, func(r string) bool { return Repository(r) == repo }) {
			continue
		}
		for _, ds := range []map[string]string{o.want, o.from} {
			for _, d := range ds {
				if d != "" && !slices.Contains(job, d) {
					job = append(job, d)
				}
			}
		}
	}
	if f != nil {
		f.pruning = repo
		defer func() { p.mu.Lock(); f.pruning = ""; p.mu.Unlock() }()
	}
	p.mu.Unlock()
	// A job that deletes images on every node starts only while this
	// updater holds the lease, as every other job does.
	if !p.confirm(ctx) {
		if ctx.Err() == nil || lost(ctx) {
			log.Warn("prune skipped: this updater no longer holds the lease")
		}
		return
	}
	res, err := pr.Nodes.Prune(ctx, PruneJob{
		Name:    jobName(rel.ServiceName, "prune", rel.ID),
		Service: rel.ServiceID,
		Repo:    repo,
		Image:   pr.Image,
		Keep:    job,
		Timeout: timeout,
	}, creds)
	if err != nil {
		log.Warn("prune failed; the images stay until a later deploy prunes them", "err", err)
		return
	}
	for _, n := range res {
		if n.Err != "" {
			log.Warn("prune failed on a node; its images stay until a later deploy prunes them", "node", n.Node, "removed", n.Removed, "bytes", n.Bytes, "err", n.Err)
			continue
		}
		log.Info("images pruned", "node", n.Node, "removed", n.Removed, "bytes", n.Bytes)
	}
}

// kept is what stays after rel: its digest, then the keep versions before
// it, newest first. rel.From is the version before it whatever the record
// says: the one a rollback returns to.
func kept(rel Release, before []string, keep int) []string {
	out := []string{rel.To}
	for _, d := range append([]string{rel.From}, before...) {
		if len(out) > keep {
			break
		}
		if d != "" && !slices.Contains(out, d) {
			out = append(out, d)
		}
	}
	return out
}

// Repository is ref without tag and digest: "127.0.0.1:5000/app:1" is
// "127.0.0.1:5000/app". The colon of a registry port stays.
func Repository(ref string) string {
	ref, _ = SplitImage(ref)
	slash := strings.LastIndex(ref, "/")
	if i := strings.LastIndex(ref, ":"); i > slash {
		return ref[:i]
	}
	return ref
}
