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
		p.retagged(*t)
	}
	return errs
}

// retagged warns, once, when the tag in t's spec was changed by someone
// else since the last cycle (a stack deploy that put an older tag back):
// the policy, not that tag, says what t runs, so the next deploy moves it
// back to the tag the policy picks.
func (p *Pipeline) retagged(t Target) {
	spec, _ := SplitImage(t.Image)
	p.mu.Lock()
	last, seen := p.specRefs[t.ID]
	if p.specRefs == nil {
		p.specRefs = map[string][2]string{}
	}
	p.specRefs[t.ID] = [2]string{spec, t.Follow}
	p.mu.Unlock()
	if seen && spec != last[0] && spec != last[1] {
		p.Log.Warn("the service's tag was changed by someone else (a stack deploy?): its tag policy follows another one, and deploys it again",
			"service", t.Name, "spec_tag", spec, "was", last[0], "policy", t.Tags.String(), "follows", t.Follow)
	}
}
