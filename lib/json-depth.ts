/**
 * The deepest bracket nesting in a JSON text, scanning once and skipping string contents. It runs before
 * JSON.parse so that a body like `[[[[…]]]]` is refused in linear time, before any recursive walker
 * (JSON.stringify when we forward, schema and filter walkers) could overflow the stack.
 * Returns early as soon as `limit` is exceeded.
 */
export function exceedsDepth (text: string, limit: number): boolean {
  let depth = 0
  let inString = false
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i)
    if (inString) {
      if (c === 0x5c) i++ // backslash: skip the escaped character
      else if (c === 0x22) inString = false
    } else if (c === 0x22) {
      inString = true
    } else if (c === 0x7b || c === 0x5b) {
      if (++depth > limit) return true
    } else if (c === 0x7d || c === 0x5d) {
      depth--
    }
  }
  return false
}
