// Package soak holds a long-running test of the whole pipeline: the real
// deploy.Pipeline and the real registry client, against an in-process
// registry that injects faults, and an in-memory swarm. It checks what
// only many cycles show: nothing leaks, and no deploy happens twice.
// The package has no code of its own; see soak_test.go.
package soak
