/*
 * Small pieces of the request policy that are easier to test on their own: `*` globs for model and tool
 * names, and one walk over a body for references to the key owner's stored data.
 */

/**
 * `*`-glob match (`gpt-4o*`, `ft:*:my-org:*`), linear in practice: the classic two-pointer wildcard
 * algorithm, which backtracks only to the last `*` (a regex built from `a*b*c*` can backtrack
 * polynomially on a long model name).
 */
export function globMatch (pattern: string, text: string): boolean {
  let p = 0
  let t = 0
  let star = -1
  let mark = 0
  while (t < text.length) {
    if (p < pattern.length && pattern[p] !== '*' && pattern[p] === text[t]) {
      p++
      t++
    } else if (p < pattern.length && pattern[p] === '*') {
      star = p++
      mark = t
    } else if (star !== -1) {
      p = star + 1
      t = ++mark
    } else {
      return false
    }
  }
  while (pattern[p] === '*') p++
  return p === pattern.length
}

export const anyGlob = (patterns: readonly string[], text: string): boolean => patterns.some((g) => globMatch(g, text))

export interface StoredReference { feature: 'file_id' | 'item_reference', param: string }

/** Deeper than the JSON body guard allows: fail closed. */
const MAX_DEPTH = 256

/**
 * The first place a body points at the key owner's stored data: a `file_id`/`file_ids` anywhere (chat
 * `file` parts, Responses `input_file`/`input_image`, tool resources) or a Responses `item_reference`.
 * Iterative, whatever the nesting.
 */
export function findStoredReference (body: unknown): StoredReference | null {
  const stack: Array<{ value: unknown, path: string, depth: number }> = [{ value: body, path: '', depth: 0 }]
  for (let frame = stack.pop(); frame !== undefined; frame = stack.pop()) {
    const { value, path, depth } = frame
    if (depth > MAX_DEPTH) throw new Error('request policy: body nested too deeply to scan')
    if (Array.isArray(value)) {
      for (let i = value.length - 1; i >= 0; i--) stack.push({ value: value[i], path: `${path}[${i}]`, depth: depth + 1 })
    } else if (typeof value === 'object' && value !== null) {
      const obj = value as Record<string, unknown>
      const at = (k: string): string => (path.length === 0 ? k : `${path}.${k}`)
      if (obj.type === 'item_reference') return { feature: 'item_reference', param: at('type') }
      for (const k of ['file_id', 'file_ids']) {
        const v = obj[k]
        if (typeof v === 'string' || (Array.isArray(v) && v.length > 0)) return { feature: 'file_id', param: at(k) }
      }
      const keys = Object.keys(obj)
      for (let i = keys.length - 1; i >= 0; i--) stack.push({ value: obj[keys[i] as string], path: at(keys[i] as string), depth: depth + 1 })
    }
  }
  return null
}
