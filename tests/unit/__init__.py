"""Pure logic: windows, slots, planning, policy, VICIdial answers, config parsing."""
