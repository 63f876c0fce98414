package swarm

import (
	"context"
	"sync"
	"time"

	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"
)

// nodeRefresh bounds how often an unknown node ID makes the cache ask
// Swarm again: a node removed from the swarm stays unknown, and a rollout
// is inspected every second.
const nodeRefresh = 30 * time.Second

// nodeNames maps swarm node IDs to hostnames, which is what people know
// their nodes by. Hostnames change rarely, so one NodeList answers every
// lookup until an ID it did not list turns up.
type nodeNames struct {
	mu      sync.Mutex
	names   map[string]string
	fetched time.Time
}

// nodeName is the hostname of the node with id; the ID itself when the
// name can't be had, and "" for a task not yet assigned to a node.
func (s *Swarm) nodeName(ctx context.Context, id string) string {
	if id == "" {
		return ""
	}
	c := &s.nodes
	c.mu.Lock()
	defer c.mu.Unlock()
	if name, ok := c.names[id]; ok {
		return name
	}
	if time.Since(c.fetched) < nodeRefresh {
		return id
	}
	c.fetched = time.Now()
	res, err := s.api.NodeList(ctx, client.NodeListOptions{})
	if err != nil {
		s.log().Debug("list nodes for their names", "err", err)
		return id
	}
	c.names = make(map[string]string, len(res.Items))
	for _, n := range res.Items {
		c.names[n.ID] = hostname(n)
	}
	if name, ok := c.names[id]; ok {
		return name
	}
	return id
}

func hostname(n swarm.Node) string {
	if n.Description.Hostname != "" {
		return n.Description.Hostname
	}
	return n.ID
}
