// Command standin is what the multiarch test cross-compiles instead of the
// updater: the same build for three platforms in seconds, not minutes.
package main

var version = "dev"

func main() { println("standin", version) }
