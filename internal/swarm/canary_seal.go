package swarm

import (
	"context"
	"fmt"

	"github.com/moby/moby/api/types/swarm"

	"github.com/updater-dev/updater/internal/deploy"
)

// Seal writes the spec again as it is, once a canary's decision was
// judged (deploy.Canaries): Swarm's PreviousSpec is then the decided spec,
// and the write restarts nothing (docs/canary-swarm.md, "third write").
// Without it, `docker service rollback` after a revert would start the
// rejected canary again. A spec not on image, or still in a canary's
// form, is someone else's now: left as it is.
func (s *Swarm) Seal(ctx context.Context, t deploy.Target, image string, creds deploy.Credentials) error {
	return s.write(ctx, t, image, creds, func(spec *swarm.ServiceSpec) error {
		if was := spec.TaskTemplate.ContainerSpec.Image; was != image || canaryForm(*spec) {
			return fmt.Errorf("seal service %s after its canary: its spec runs %s (canary form: %v), not the decided %s: left as it is", t.Name, was, canaryForm(*spec), image)
		}
		return nil
	})
}
