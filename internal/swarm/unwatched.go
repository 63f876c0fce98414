package swarm

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/moby/moby/client"
)

// Unwatched is a service that looks meant to be watched, and why it is
// not: for `updater check`, which a person runs to find out. It is not
// asked in a cycle, whose cost stays one filtered List call.
type Unwatched struct {
	Service string `json:"service"`
	Stack   string `json:"stack,omitempty"`
	Reason  string `json:"reason"`
}

// Unwatched lists, with one unfiltered service list, the services that
// carry the opt-in label or an updater.* label and that List leaves out,
// with the reason: the label on the containers instead of the service (a
// compose file's `labels:` rather than `deploy.labels:`), a value other
// than "true", another stack than UPDATER_STACK, hook labels without the
// opt-in, or a plugin service with no image.
func (s *Swarm) Unwatched(ctx context.Context) ([]Unwatched, error) {
	res, err := s.api.ServiceList(ctx, client.ServiceListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list services: %w", err)
	}
	label := s.cfg.Label
	var out []Unwatched
	for _, svc := range res.Items {
		spec := svc.Spec
		stack := spec.Labels[StackLabel]
		var onContainers map[string]string
		if cs := spec.TaskTemplate.ContainerSpec; cs != nil {
			onContainers = cs.Labels
		}
		v, opted := spec.Labels[label]
		var why string
		switch {
		case opted && v == "true" && s.cfg.Stack != "" && stack != s.cfg.Stack:
			why = fmt.Sprintf("in stack %q, and UPDATER_STACK=%s watches only that stack", stack, s.cfg.Stack)
		case opted && v == "true" && spec.TaskTemplate.ContainerSpec == nil:
			why = "not a container service (a plugin): no image to follow"
		case opted && v == "true":
			continue // watched
		case opted:
			why = fmt.Sprintf("%s=%q: only \"true\" opts in", label, v)
		case onContainers[label] != "":
			why = fmt.Sprintf("%s is a label of its containers (compose `labels:`), not of the service: put it under `deploy.labels:`", label)
		default:
			own := ours(spec.Labels)
			if len(own) == 0 {
				own = ours(onContainers)
			}
			if len(own) == 0 {
				continue // nothing says it is meant to be watched
			}
			why = fmt.Sprintf("has %s but not %s=true (under `deploy.labels:`)", strings.Join(own, ", "), label)
		}
		out = append(out, Unwatched{Service: spec.Name, Stack: stack, Reason: why})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Service < out[j].Service })
	return out, nil
}

// ours lists the updater.* label keys among labels, sorted.
func ours(labels map[string]string) []string {
	var keys []string
	for k := range labels {
		if strings.HasPrefix(k, "updater.") {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	return keys
}
