/**
 * The environment the Docker image runs the server with that changes how it performs: the Dockerfile
 * runtime stage's `MALLOC_MMAP_THRESHOLD_` (why: the comment there, and docs/deploy/container.md).
 * The bench runs its children with it (bench/children.ts); test/deploy.test.ts keeps the two the same.
 */
export const IMAGE_ENV: Readonly<Record<string, string>> = { MALLOC_MMAP_THRESHOLD_: '131072' }
