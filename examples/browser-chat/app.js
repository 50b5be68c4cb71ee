/*
 * Stream a chat completion from the browser through the proxy, twice: with plain fetch (reading the SSE
 * stream by hand) and with the official openai SDK's browser build. Both send the key as
 * `Authorization: Bearer`, so the proxy's CORS must allow that header (and the SDK's x-stainless-*).
 */

/** Headers a page can only read because the proxy lists them in Access-Control-Expose-Headers. */
const SHOWN_HEADERS = ['x-ratelimit-remaining-requests', 'x-ratelimit-limit-requests', 'x-request-id', 'x-proxy-request-id']

const $ = (id) => document.getElementById(id)

// Only the (non-secret) base URL may come from the query string; a key in a URL ends up in logs and history.
const fromQuery = new URLSearchParams(window.location.search).get('baseURL')
if (fromQuery) $('base-url').value = fromQuery

function settings () {
  return {
    baseURL: $('base-url').value.trim().replace(/\/+$/, ''),
    apiKey: $('api-key').value.trim(),
    model: $('model').value.trim(),
    messages: [{ role: 'user', content: $('prompt').value }]
  }
}

function showHeaders (headers) {
  $('headers').replaceChildren(...SHOWN_HEADERS.flatMap((name) => {
    const dt = document.createElement('dt')
    const dd = document.createElement('dd')
    dt.textContent = name
    dd.textContent = headers.get(name) ?? '(not sent or not exposed)'
    dd.dataset.header = name
    return [dt, dd]
  }))
}

/** Plain fetch: POST with stream:true and parse `data:` lines until `[DONE]`. */
async function streamWithFetch ({ baseURL, apiKey, model, messages }, onText) {
  const res = await fetch(`${baseURL}/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${apiKey}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model, messages, stream: true })
  })
  showHeaders(res.headers)
  if (!res.ok) {
    const body = await res.json().catch(() => null)
    throw new Error(body?.error?.message ?? `HTTP ${res.status}`)
  }
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader()
  let buffer = ''
  for (;;) {
    const { value, done } = await reader.read()
    if (done) return
    buffer = (buffer + value).replace(/\r\n/g, '\n')
    let end
    while ((end = buffer.indexOf('\n\n')) !== -1) {
      const event = buffer.slice(0, end)
      buffer = buffer.slice(end + 2)
      for (const line of event.split('\n')) {
        if (!line.startsWith('data:')) continue
        const data = line.slice(5).trim()
        if (data === '[DONE]') return
        onText(JSON.parse(data).choices?.[0]?.delta?.content ?? '')
      }
    }
  }
}

/** The official SDK. `dangerouslyAllowBrowser` is required in a browser, even with a per-user key. */
async function streamWithSdk ({ baseURL, apiKey, model, messages }, onText) {
  const { default: OpenAI } = await import('openai')
  const client = new OpenAI({ baseURL, apiKey, dangerouslyAllowBrowser: true, maxRetries: 1 })
  const { data: stream, response } = await client.chat.completions.create({ model, messages, stream: true }).withResponse()
  showHeaders(response.headers)
  for await (const chunk of stream) onText(chunk.choices[0]?.delta?.content ?? '')
}

function wire (button, which, run) {
  $(button).addEventListener('click', async () => {
    const output = $(`output-${which}`)
    const status = $(`status-${which}`)
    output.textContent = ''
    status.className = 'status'
    status.textContent = 'streaming…'
    status.dataset.state = 'streaming'
    const started = performance.now()
    try {
      await run(settings(), (text) => { output.textContent += text })
      status.textContent = `done in ${Math.round(performance.now() - started)} ms`
      status.dataset.state = 'done'
    } catch (err) {
      status.className = 'status error'
      status.textContent = `error: ${err.message}`
      status.dataset.state = 'error'
    }
  })
}

wire('send-fetch', 'fetch', streamWithFetch)
wire('send-sdk', 'sdk', streamWithSdk)
document.body.dataset.ready = 'true'
