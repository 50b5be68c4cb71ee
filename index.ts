/**
 * oai-reverse-proxy as a library: the suite plugin, its building blocks, option types and errors.
 * `import oaiProxy from 'oai-reverse-proxy'` and `app.register(oaiProxy, { openaiKeys: [...] })`.
 */
export { default, default as oaiProxy, resolveOptions, VERSION } from './app.js'
export { default as auth, matchKey, type AuthOptions, type OaiProxyClient } from './plugins/auth.js'
export { default as keyInjection, type KeyInjectionOptions, type OaiProxyKeys } from './plugins/key-injection.js'
export { default as upstream, type UpstreamOptions, type OaiProxyUpstream } from './plugins/upstream.js'
export { default as jsonBody, type JsonBodyOptions } from './plugins/json-body.js'
export { default as requestGuard } from './plugins/request-guard.js'
export { default as errorHandler } from './plugins/error-handler.js'
export { readConfig, ConfigError, type LoadedConfig, type ServerConfig } from './plugins/config.js'
export { default as proxyRoutes, type ProxyRoutesOptions } from './routes/proxy.js'
export { OaiProxyOptionsSchema, type OaiProxyOptions } from './schemas/config.js'
export { endpoints, type EndpointDefinition } from './schemas/endpoints.js'
export { ProxyErrors, type ProxyErrorName } from './errors.js'
export { KeyPool } from './lib/key-pool.js'
export { startFakeOpenAI, type FakeOpenAI, type FakeOpenAIOptions, type Plan, type RecordedRequest } from './testing/fake-openai.js'
