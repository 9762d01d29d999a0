"""refreshd's tests: unit/ (pure logic), component/ (in-process parts), process/ (the real
`refreshd` command) and support/ (what they share)."""
