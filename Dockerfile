# oai-reverse-proxy: the standalone server (dist/server.js) in a small image.
#
#   docker build -t oai-reverse-proxy .
#   docker run --rm -p 8080:8080 -e OPENAI_KEY=sk-... -e PROXY_KEY=... oai-reverse-proxy
#
# NODE_ENV=production is set below, so the container refuses to start without OPENAI_KEY (it never falls
# back to the demo upstream). For a keyless demo container pass `-e NODE_ENV=development`.

ARG NODE_VERSION=22

# ---- build: full dependencies, compile TypeScript to dist/ ----
FROM node:${NODE_VERSION}-bookworm-slim AS build
WORKDIR /app
ENV NPM_CONFIG_UPDATE_NOTIFIER=false NPM_CONFIG_FUND=false NPM_CONFIG_AUDIT=false
COPY package.json package-lock.json ./
RUN npm ci
# The sources tsconfig.build.json compiles (*.ts, plugins, routes, schemas, lib, testing, bench); what
# must stay out of the context (node_modules, dist, .env, test output) is listed in .dockerignore.
COPY . .
# Ship what package.json `files` ships: no compiled tests or benchmarks, no source maps.
RUN npm run build && rm -rf dist/test dist/bench && find dist -name '*.map' -delete

# ---- runtime: production dependencies and dist/ only ----
# .ci/runtime-stage.mjs reproduces this stage on CI (no container engine there) from this file: an
# instruction or RUN command it does not know fails CI until it is taught, so keep the two together.
FROM node:${NODE_VERSION}-bookworm-slim AS runtime
WORKDIR /app
ENV NPM_CONFIG_UPDATE_NOTIFIER=false NPM_CONFIG_FUND=false NPM_CONFIG_AUDIT=false
# /data: where a KEYS_FILE (and the <KEYS_FILE>.usage.json beside it) lives on a volume. Owned by `node`
# (uid/gid 1000, also the uid Hugging Face Spaces run containers as) so a fresh Docker named volume mounted
# here starts writable for it; the proxy writes the file by temp file + rename, so it needs the directory.
RUN mkdir -p /data && chown node:node /data
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts && npm cache clean --force
# Owned by root and read-only for the `node` user that runs the server.
COPY --from=build /app/dist ./dist

ENV NODE_ENV=production HOST=0.0.0.0 PORT=8080
# glibc hands blocks of 128 KiB or more back to the system when freed. By default it raises that threshold
# to the largest block freed so far, so after some large prompts (bodies are read whole) their memory stays
# in its heap for good: `npm run bench` measured 15-30 MiB more RSS under 1000 streams that followed large
# prompts (docs/performance.md). Setting the threshold fixes it at 128 KiB; read once, at process start.
ENV MALLOC_MMAP_THRESHOLD_=131072
EXPOSE 8080
USER node

# Slim images have no curl: ask Node itself. /health is unauthenticated and never touches upstream.
# It probes 127.0.0.1, so keep HOST at 0.0.0.0 (or another address that includes loopback).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:'+(process.env.PORT||8080)+'/health',{signal:AbortSignal.timeout(4000)}).then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]

# Exec form: node is PID 1 and receives SIGTERM directly; server.ts drains in-flight requests
# (SHUTDOWN_GRACE_MS) before exiting.
CMD ["node", "dist/server.js"]
