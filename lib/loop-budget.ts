/*
 * One budget for heavy request work (parsing, normalising, screening large prompts) per turn of the event
 * loop, shared by all requests. When several large bodies finish arriving in the same turn, working through
 * all of them at once would hold every stream in flight, every timer and every small request for the whole
 * batch (at 16 concurrent 256 KB prompts, ~25 ms). Past the budget, heavy work waits for a later turn, so
 * the loop keeps turning every few milliseconds however many large prompts are in flight. Light work (small
 * prompts) never waits.
 */

/** Heavy work allowed in one turn of the event loop before the rest waits for the next turn. */
export const TURN_BUDGET_MS = 2

let windowStart = -1

function closeWindow (): void {
  windowStart = -1
}

/** Whether the heavy work done in this turn of the event loop has used up its budget. */
export function overBudget (): boolean {
  const now = performance.now()
  if (windowStart < 0) {
    windowStart = now
    // Immediates run once this turn's I/O callbacks are done: the next heavy work opens a new window.
    setImmediate(closeWindow)
    return false
  }
  return now - windowStart >= TURN_BUDGET_MS
}

/**
 * Resolves on a later turn of the event loop, after its timers and I/O callbacks. Two immediates: one queued
 * from an I/O callback runs in this same turn; one queued from there runs in the next.
 */
export async function laterTurn (): Promise<void> {
  await new Promise<void>((resolve) => setImmediate(() => setImmediate(resolve)))
}

/**
 * Work on fewer characters than this is never deferred: it costs less than a deferral (two immediates and
 * a promise), and a burst of small requests (1000 streams opening at once) must not queue behind the budget,
 * which their own ordinary handling would have used up.
 */
export const LIGHT_CHARS = 16 * 1024

/**
 * Before work on `chars` characters: light work goes ahead at once; heavy work waits for a later turn while
 * this one's budget is spent, asked again on waking, since work from many requests may wake in the same turn.
 */
export async function yieldTurn (chars: number): Promise<void> {
  if (chars < LIGHT_CHARS) return
  while (overBudget()) await laterTurn()
}
