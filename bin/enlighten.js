#!/usr/bin/env node
// Each thread that waits on epoll without blocking its event loop holds a libuv pool
// thread; give the pool room before anything uses it.
process.env.UV_THREADPOOL_SIZE ??= '16';
const { main } = await import('../dist/src/cli/main.js');
await main(process.argv);
