package main

import (
	"io"

	"github.com/updater-dev/updater/internal/nodeprune"
)

// prune is the node's half of image pruning, which the prune job runs on
// every node: package nodeprune.
func prune(args []string, stdout, stderr io.Writer) int { return nodeprune.Main(args, stdout, stderr) }
