/**
 * oai-reverse-proxy as a library: the suite plugin, its building blocks, option types and errors.
 * `import oaiProxy from 'oai-reverse-proxy'` and `app.register(oaiProxy, { openaiKeys: [...] })`.
 */
export { default, default as oaiProxy, resolveOptions, VERSION } from './app.js'
export { default as auth, matchKey, type AuthOptions, type OaiProxyClient, type ResolveClient } from './plugins/auth.js'
export { default as cors, corsAllowedHeaders, corsExposedHeaders, type CorsOptions } from './plugins/cors.js'
export { compileOrigins, type OriginMatcher } from './lib/origins.js'
export { default as keyInjection, type KeyInjectionOptions, type OaiProxyKeys } from './plugins/key-injection.js'
export { default as upstream, type UpstreamOptions, type OaiProxyUpstream } from './plugins/upstream.js'
export { default as jsonBody, type JsonBodyOptions } from './plugins/json-body.js'
export { default as requestGuard, type RequestGuardOptions } from './plugins/request-guard.js'
export { default as errorHandler, type ErrorHandlerOptions } from './plugins/error-handler.js'
export { default as requestPolicy, type RequestPolicyOptions } from './plugins/request-policy.js'
export { default as promptFilter, DEFAULT_REJECT_MESSAGE, type PromptFilterOptions } from './plugins/prompt-filter.js'
export { normalise } from './lib/normalise.js'
export { readConfig, ConfigError, type LoadedConfig, type ServerConfig } from './plugins/config.js'
export { default as proxyRoutes, type ProxyRoutesOptions } from './routes/proxy.js'
export { OaiProxyOptionsSchema, type OaiProxyOptions } from './schemas/config.js'
export { endpoints, type EndpointDefinition, type PromptFields } from './schemas/endpoints.js'
export { ProxyErrors, type ProxyErrorName } from './errors.js'
export { KeyPool } from './lib/key-pool.js'
export { startFakeOpenAI, type FakeOpenAI, type FakeOpenAIOptions, type Plan, type RecordedRequest } from './testing/fake-openai.js'
