package swarm

// Scope is the scope an updater watching the services with label in stack
// names its Swarm objects with (records, jobs, the lease), for tools and
// tests that find or clean up what such an updater left.
func Scope(label, stack string) string {
	return (&Swarm{cfg: Config{Label: label, Stack: stack}}).scope()
}
