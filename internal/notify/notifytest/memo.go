// Package notifytest has test doubles for notifiers' collaborators.
package notifytest

import (
	"context"
	"sync"
)

// Memo is an in-memory notify.Memo; two notifiers given the same Memo see
// each other's entries, as two updater runs share Swarm.
type Memo struct {
	mu      sync.Mutex
	entries map[string]string
}

func (m *Memo) Recall(_ context.Context, deployID, key string) (string, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	v, ok := m.entries[deployID+"/"+key]
	return v, ok, nil
}

func (m *Memo) Remember(_ context.Context, deployID, key, value string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.entries == nil {
		m.entries = map[string]string{}
	}
	m.entries[deployID+"/"+key] = value
	return nil
}

func (m *Memo) Drop(_ context.Context, deployID, key string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.entries, deployID+"/"+key)
	return nil
}

// Len is how many entries are kept.
func (m *Memo) Len() int { m.mu.Lock(); defer m.mu.Unlock(); return len(m.entries) }
