"""Speed and I/O helpers that never change a result: host threads, the allocator setting, image files, progress."""
