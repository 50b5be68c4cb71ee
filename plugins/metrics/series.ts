import type { Metric } from 'prom-client'

/*
 * Series kept as plain numbers in preallocated arrays, turned into prom-client's values only when scraped.
 * prom-client's own Counter and Histogram hash a label object on every `inc`/`observe` (and find a bucket
 * by its bound turned into a string); here recording a request is a few array increments at indexes made
 * of small integers. prom-client still owns the registry and the exposition format.
 */

export type Labels = Record<string, string>
export interface Value { value: number, labels: Labels, metricName?: string }

/** A label's values: a fixed list, or one that grows to a cap (`BoundedLabels`). */
export interface LabelValues { readonly values: readonly string[], readonly size: number }

/** What prom-client's registry reads from a metric: the shape its own classes return from `get()`. */
abstract class Series {
  readonly aggregator = 'sum'
  constructor (readonly name: string, readonly help: string, readonly type: 'counter' | 'gauge' | 'histogram') {}
  abstract values (): Value[]
  async get (): Promise<{ name: string, help: string, type: string, aggregator: string, values: Value[] }> {
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values: this.values() }
  }

  /** For `registry.registerMetric`, whose type names prom-client's classes though it reads only this shape. */
  asMetric (): Metric {
    return this as unknown as Metric
  }
}

/** A fixed list of label values. */
export const fixed = (values: readonly string[]): LabelValues => ({ values, size: values.length })

/**
 * Label values learnt at run time (filter rule ids, client ids), capped: past `cap` distinct values every
 * new one is counted as `overflow`, so a config or a crowd of clients cannot grow the series without bound.
 */
export class BoundedLabels implements LabelValues {
  readonly values: string[] = []
  readonly #index = new Map<string, number>()
  readonly size: number

  constructor (readonly cap: number, readonly overflow = '_other') {
    this.size = cap + 1
  }

  indexOf (value: string): number {
    const known = this.#index.get(value)
    if (known !== undefined) return known
    if (this.values.length >= this.cap) return this.cap
    this.#index.set(value, this.values.length)
    this.values.push(value)
    return this.values.length - 1
  }

  label (i: number): string {
    return i === this.cap ? this.overflow : this.values[i] as string
  }
}

const labelOf = (dim: LabelValues, i: number): string => (dim instanceof BoundedLabels ? dim.label(i) : dim.values[i] as string)

/** Cell index <-> one index per dimension, row-major. */
class Cells {
  readonly strides: number[]
  readonly count: number
  constructor (readonly dims: ReadonlyArray<{ name: string, labels: LabelValues }>) {
    const sizes = dims.map((d) => d.labels.size)
    this.strides = sizes.map((_s, i) => sizes.slice(i + 1).reduce((a, b) => a * b, 1))
    this.count = sizes.reduce((a, b) => a * b, 1)
  }

  labels (cell: number): Labels {
    const out: Labels = {}
    this.dims.forEach((d, i) => { out[d.name] = labelOf(d.labels, Math.floor(cell / (this.strides[i] as number)) % d.labels.size) })
    return out
  }
}

/** A counter over the cross product of a few labels. Cells at zero are not exported: most combinations never happen. */
export class CounterTable extends Series {
  readonly #cells: Cells
  readonly #strides: [number, number, number]
  readonly counts: Float64Array

  constructor (name: string, help: string, dims: ReadonlyArray<{ name: string, labels: LabelValues }>) {
    super(name, help, 'counter')
    this.#cells = new Cells(dims)
    // Up to three labels; a missing one has stride 0.
    this.#strides = [0, 1, 2].map((i) => this.#cells.strides[i] ?? 0) as [number, number, number]
    this.counts = new Float64Array(this.#cells.count)
  }

  /** The cell of one index per label, in the order the labels were given. */
  cell (a: number, b = 0, c = 0): number {
    const s = this.#strides
    return a * s[0] + b * s[1] + c * s[2]
  }

  add (cell: number, n = 1): void {
    this.counts[cell] = (this.counts[cell] as number) + n
  }

  values (): Value[] {
    const out: Value[] = []
    this.counts.forEach((value, cell) => { if (value !== 0) out.push({ value, labels: this.#cells.labels(cell) }) })
    return out
  }
}

/** A histogram with one label (the endpoint); rows that never observed anything are not exported. */
export class HistogramTable extends Series {
  readonly #label: { name: string, labels: LabelValues }
  readonly #bounds: Float64Array
  readonly #counts: Float64Array
  readonly #sums: Float64Array
  readonly #width: number

  constructor (name: string, help: string, label: { name: string, labels: LabelValues }, bounds: readonly number[]) {
    super(name, help, 'histogram')
    this.#label = label
    this.#bounds = Float64Array.from(bounds)
    // Per row: one count per bucket (not cumulative), then the +Inf overflow.
    this.#width = bounds.length + 1
    this.#counts = new Float64Array(label.labels.size * this.#width)
    this.#sums = new Float64Array(label.labels.size)
  }

  observe (row: number, seconds: number): void {
    const bounds = this.#bounds
    let b = 0
    while (b < bounds.length && seconds > (bounds[b] as number)) b++
    const at = row * this.#width + b
    this.#counts[at] = (this.#counts[at] as number) + 1
    this.#sums[row] = (this.#sums[row] as number) + seconds
  }

  values (): Value[] {
    const out: Value[] = []
    for (let row = 0; row < this.#label.labels.size; row++) {
      const base = row * this.#width
      let total = 0
      for (let b = 0; b < this.#width; b++) total += this.#counts[base + b] as number
      if (total === 0) continue
      const shared = { [this.#label.name]: labelOf(this.#label.labels, row) }
      let acc = 0
      this.#bounds.forEach((bound, b) => {
        acc += this.#counts[base + b] as number
        out.push({ metricName: `${this.name}_bucket`, labels: { ...shared, le: String(bound) }, value: acc })
      })
      out.push({ metricName: `${this.name}_bucket`, labels: { ...shared, le: '+Inf' }, value: total })
      out.push({ metricName: `${this.name}_sum`, labels: shared, value: this.#sums[row] as number })
      out.push({ metricName: `${this.name}_count`, labels: shared, value: total })
    }
    return out
  }
}

/** A gauge (or counter) whose values are read when scraped: key states, the store's state, streams open. */
export class Sampled extends Series {
  constructor (name: string, help: string, readonly read: () => Value[], type: 'counter' | 'gauge' = 'gauge') {
    super(name, help, type)
  }

  values (): Value[] {
    return this.read()
  }
}
