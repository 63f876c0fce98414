package deploy

import (
	"context"
	"fmt"
)

// Tag policies (updater.policy): a service whose policy is not "tag"
// follows the highest tag of its repository the policy allows, listed
// once per cycle for every service of that repository and policy, then
// looked up (HEAD) like any tag; the deploy pins repo:newtag@digest.

// follow sets Follow on each target with a tag policy to the tag it picks
// now. errs are the targets whose repository could not be listed, or has
// no tag the policy allows, by ID: they are planned as registry errors.
func (p *Pipeline) follow(ctx context.Context, targets []Target) (errs map[string]error) {
	type listing struct {
		tags []string
		err  error
	}
	listed := map[string]listing{}
	for i := range targets {
		t := &targets[i]
		if t.Tags == nil || !Tagged(t.Ref()) {
			continue
		}
		repo := Repository(t.Ref())
		key := repo + " " + t.Tags.String()
		l, ok := listed[key]
		if !ok {
			l.tags, l.err = p.Registry.Tags(ctx, t.Ref())
			listed[key] = l
		}
		if errs == nil {
			errs = map[string]error{}
		}
		if l.err != nil {
			errs[t.ID] = fmt.Errorf("list the tags of %s for its policy %s: %w", repo, t.Tags, l.err)
			continue
		}
		tag, ok := t.Tags.Pick(l.tags)
		if !ok {
			errs[t.ID] = fmt.Errorf("no tag of %s matches its policy %s (updater.policy): %d tags listed", repo, t.Tags, len(l.tags))
			continue
		}
		delete(errs, t.ID)
		t.Follow = repo + ":" + tag
	}
	return errs
}
