"""What the tests share: configs written as TOML, the simulator, the real daemon as a child
process, loopback ports and bounded waits. Test modules import from here, never from each
other."""
