import fc from 'fast-check'
import { countTokens as cl100k } from 'gpt-tokenizer/encoding/cl100k_base'
import { countTokens as o200k } from 'gpt-tokenizer/encoding/o200k_base'
import t from 'tap'
import {
  BINARY_MIN_LENGTH, BINARY_TOKENS, estimatePrompt, estimateTextTokens, outputCap, PER_MESSAGE, WORST_CASE_FACTOR
} from '../../lib/token-estimate.js'
import { analyse } from '../../lib/request-analysis.js'
import { endpoints } from '../../schemas/endpoints.js'

/*
 * The estimate against exact BPE counts (gpt-tokenizer, both encodings, special-token text counted as
 * text). The corpus is written here or generated from a seeded PRNG: no files, no network. Exact counts
 * of long runs without spaces are quadratic in gpt-tokenizer, so those samples stay under 20k characters.
 */

const asText = { disallowedSpecial: new Set<string>() }
const bytes = (s: string) => Buffer.byteLength(s, 'utf8')

let state = 0
function random (): number { // mulberry32
  state = (state + 0x6d2b79f5) >>> 0
  let x = Math.imul(state ^ (state >>> 15), state | 1)
  x ^= x + Math.imul(x ^ (x >>> 7), x | 61)
  return ((x ^ (x >>> 14)) >>> 0) / 4294967296
}
const int = (n: number) => Math.floor(random() * n)
const pick = <T>(items: readonly T[]): T => items[int(items.length)] as T
const chars = (alphabet: string, n: number) => Array.from({ length: n }, () => pick([...alphabet])).join('')
const codePoints = (lo: number, hi: number, n: number) => Array.from({ length: n }, () => String.fromCodePoint(lo + int(hi - lo + 1))).join('')
const randomBytes = (n: number) => Buffer.from(Array.from({ length: n }, () => int(256)))
const shuffle = <T>(items: T[]): T[] => items.map((v) => [random(), v] as const).sort((a, b) => a[0] - b[0]).map(([, v]) => v)
const spaced = (s: string, sep = ' ') => [...s].join(sep)
const lower = 'abcdefghijklmnopqrstuvwxyz'
const upper = lower.toUpperCase()
const digits = '0123456789'
const punct = '!"#$%&\'()*+,-./:;<=>?@[\\]^_`{|}~'

const english = [
  'The proxy sits between a browser and the OpenAI API. It holds the real key, checks who is asking, and decides whether a request may go through. Nothing about that is glamorous, but a shared key without limits is an invitation: one runaway script can spend a month of budget in an afternoon.',
  'When I first read the logs I thought the numbers were wrong. Forty thousand requests in an hour, all from the same address, all asking for the same poem about a lighthouse. It turned out a student had left a loop running over the weekend. Nobody was angry; we just added a limit, wrote a short note, and went back to lunch.',
  'Rate limiting is usually explained with buckets. Each client has a bucket that holds a number of tokens; a request takes some out, and the bucket refills at a steady rate. The trick with language models is that the cost of a request is not known until it finishes, so the proxy reserves an estimate up front and settles the difference when the real usage arrives.',
  'On Tuesday, March 3rd, the team met at 9:30 a.m. to review Q1 results: revenue grew 12.5% to $4.2 million, churn fell from 3.1% to 2.4%, and the support backlog dropped below 150 tickets for the first time since 2023. "We\'re not done," Maria said, "but we\'re finally ahead."',
  'Dear customer,\n\nThank you for your message. We have reviewed your account and found that the charge of $19.99 on 14/02 was applied twice due to a billing error. A refund has been issued and should appear within 5-7 business days.\n\nKind regards,\nThe Support Team',
  'Photosynthesis converts light energy into chemical energy. In the light-dependent reactions, chlorophyll absorbs photons and splits water molecules, releasing oxygen; the Calvin cycle then fixes carbon dioxide into three-carbon sugars. Although the overall equation looks simple, dozens of enzymes and intermediate compounds are involved.',
  '- Install the dependencies.\n- Copy `.env.example` to `.env` and set OPENAI_API_KEY.\n- Run `npm start` and open http://localhost:3000 in a browser.\n- If the page stays blank, check the console for CORS errors and make sure ALLOWED_ORIGINS includes your host.',
]

const typescript = `import { createHash } from 'node:crypto'
import type { FastifyInstance, FastifyRequest } from 'fastify'

export interface WindowOptions {
  /** Length of the window in milliseconds. */
  windowMs: number
  limit: number
}

export class SlidingWindow {
  private readonly hits = new Map<string, number[]>()

  constructor (private readonly options: WindowOptions) {
    if (!Number.isInteger(options.limit) || options.limit <= 0) {
      throw new TypeError(\`limit must be a positive integer, got \${String(options.limit)}\`)
    }
  }

  take (key: string, now = Date.now()): { ok: boolean, remaining: number, resetMs: number } {
    const since = now - this.options.windowMs
    const list = (this.hits.get(key) ?? []).filter((t) => t > since)
    const ok = list.length < this.options.limit
    if (ok) list.push(now)
    this.hits.set(key, list)
    const oldest = list[0] ?? now
    return { ok, remaining: Math.max(0, this.options.limit - list.length), resetMs: oldest + this.options.windowMs - now }
  }
}

export function fingerprint (request: FastifyRequest): string {
  const header = request.headers.authorization ?? ''
  return createHash('sha256').update(header).digest('hex').slice(0, 16)
}

export default async function plugin (app: FastifyInstance, opts: WindowOptions): Promise<void> {
  const window = new SlidingWindow(opts)
  app.addHook('onRequest', async (request, reply) => {
    const { ok, remaining, resetMs } = window.take(fingerprint(request))
    reply.header('x-ratelimit-remaining-requests', remaining)
    if (!ok) {
      await reply.code(429).header('retry-after', Math.ceil(resetMs / 1000)).send({ error: { message: 'Too many requests', type: 'requests' } })
    }
  })
}
`

const python = `def merge_intervals(intervals):
    """Merge overlapping [start, end] intervals and return them sorted."""
    if not intervals:
        return []
    intervals = sorted(intervals, key=lambda pair: pair[0])
    merged = [list(intervals[0])]
    for start, end in intervals[1:]:
        if start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged


if __name__ == "__main__":
    print(merge_intervals([[1, 3], [2, 6], [8, 10], [15, 18]]))
`

const prose = {
  chinese: '人工智能正在改变我们的工作方式。许多公司开始使用大型语言模型来回答客户的问题、撰写报告和分析数据。然而，这些模型的使用成本并不低，因此需要对每个用户的请求数量进行限制。代理服务器可以在不暴露密钥的情况下，让多个用户共享同一个账户，并确保没有人能够在短时间内耗尽全部预算。',
  japanese: '昨日、友達と一緒に京都へ行きました。朝早く出発したので、電車はまだ空いていました。お寺を三つ見て、昼ご飯には抹茶のそばを食べました。午後は雨が降り始めましたが、傘を持っていたので大丈夫でした。帰りの新幹線ではずっと寝ていました。',
  korean: '오늘은 날씨가 정말 좋아서 공원에 산책을 나갔습니다. 많은 사람들이 자전거를 타거나 강아지와 함께 걷고 있었습니다. 저는 벤치에 앉아서 책을 읽다가 커피를 한 잔 마셨습니다. 이런 평범한 하루가 가장 행복하다는 생각이 들었습니다.',
  russian: 'Прокси-сервер хранит настоящий ключ и проверяет каждый запрос, прежде чем отправить его дальше. Если клиент превышает лимит, он получает ответ с кодом 429 и заголовком, который говорит, сколько секунд нужно подождать. Так один забытый скрипт не сможет потратить месячный бюджет за один вечер.',
  ukrainian: 'Проксі-сервер зберігає справжній ключ і перевіряє кожен запит, перш ніж передати його далі. Якщо клієнт перевищує ліміт, він отримує відповідь із кодом 429 та підказкою, скільки секунд треба зачекати. Так забутий скрипт не витратить місячний бюджет за один вечір.',
  arabic: 'يعمل الخادم الوسيط بين المتصفح وواجهة البرمجة، ويحتفظ بالمفتاح الحقيقي بعيدا عن المستخدمين. عندما يتجاوز أحد العملاء الحد المسموح به، يتلقى رسالة تطلب منه الانتظار قليلا قبل إرسال طلب جديد. بهذه الطريقة يبقى الحساب المشترك آمنا ومتاحا للجميع.',
  french: "Le serveur mandataire garde la vraie clé et vérifie chaque requête avant de l'envoyer. Si un client dépasse la limite, il reçoit une réponse 429 qui lui indique combien de secondes attendre. Ainsi, un script oublié ne peut pas dépenser le budget d'un mois en une soirée.",
  german: 'Der Proxy bewahrt den echten Schlüssel auf und prüft jede Anfrage, bevor er sie weiterleitet. Überschreitet ein Client das Limit, erhält er eine Antwort mit dem Statuscode 429 und einem Hinweis, wie viele Sekunden er warten muss. So kann ein vergessenes Skript nicht an einem Abend das Monatsbudget verbrauchen.',
  spanish: 'El servidor intermedio guarda la clave real y revisa cada petición antes de reenviarla. Si un cliente supera el límite, recibe una respuesta 429 que le indica cuántos segundos debe esperar. Así, un script olvidado no puede gastar el presupuesto de un mes en una sola noche.',
  polish: 'Serwer pośredniczący przechowuje prawdziwy klucz i sprawdza każde żądanie, zanim je przekaże. Jeśli klient przekroczy limit, otrzymuje odpowiedź 429 z informacją, ile sekund musi poczekać. Dzięki temu zapomniany skrypt nie wyda miesięcznego budżetu w jeden wieczór.',
  turkish: 'Vekil sunucu gerçek anahtarı saklar ve her isteği iletmeden önce kontrol eder. Bir istemci sınırı aşarsa, kaç saniye beklemesi gerektiğini söyleyen bir 429 yanıtı alır.',
  vietnamese: 'Máy chủ trung gian giữ khóa thật và kiểm tra mọi yêu cầu trước khi chuyển tiếp. Nếu một khách hàng vượt quá giới hạn, họ sẽ nhận được phản hồi 429 cho biết cần chờ bao nhiêu giây.',
  greek: 'Ο διακομιστής μεσολάβησης κρατά το πραγματικό κλειδί και ελέγχει κάθε αίτημα πριν το προωθήσει. Αν ένας πελάτης ξεπεράσει το όριο, λαμβάνει απάντηση 429 που του λέει πόσα δευτερόλεπτα να περιμένει.',
  hebrew: 'שרת הביניים שומר את המפתח האמיתי ובודק כל בקשה לפני שהוא מעביר אותה. אם לקוח חורג מהמגבלה, הוא מקבל תשובה 429 שאומרת לו כמה שניות לחכות.',
  hindi: 'प्रॉक्सी सर्वर असली कुंजी को सुरक्षित रखता है और हर अनुरोध को आगे भेजने से पहले जांचता है। यदि कोई ग्राहक सीमा पार कर जाता है, तो उसे 429 उत्तर मिलता है जो बताता है कि कितने सेकंड प्रतीक्षा करनी है।',
  thai: 'พร็อกซีเซิร์ฟเวอร์เก็บกุญแจจริงไว้และตรวจสอบทุกคำขอก่อนส่งต่อ หากลูกค้าใช้งานเกินขีดจำกัด จะได้รับคำตอบ 429 ที่บอกว่าต้องรอกี่วินาที',
}

const emoji = ['😀', '😂', '🥲', '😍', '🤔', '👍', '🙏', '🔥', '✨', '🎉', '❤️', '✅', '🚀', '🐶', '🍕', '⚽', '🌍', '💡', '📦', '🧪']
const zwj = ['👨‍👩‍👧‍👦', '👩‍💻', '🧑‍🚀', '🏳️‍🌈', '👨🏽‍⚕️', '🧔🏿‍♂️', '👩‍❤️‍💋‍👨', '🐻‍❄️', '❤️‍🔥', '🫱🏼‍🫲🏾']
const flags = ['🇺🇸', '🇫🇷', '🇯🇵', '🇧🇷', '🇮🇳', '🇩🇪', '🇰🇷', '🇳🇬', '🇺🇦', '🇦🇶']
const specials = ['<|endoftext|>', '<|im_start|>', '<|im_end|>', '<|fim_prefix|>', '<|endofprompt|>']

interface Sample { category: string, name: string, text: string }

function corpus (): Sample[] {
  state = 0x2545f491
  const out: Sample[] = []
  const add = (category: string, name: string, text: string) => { out.push({ category, name, text }) }
  const records = (n: number) => Array.from({ length: n }, () => ({
    id: 1000 + int(9000),
    name: `${pick([...lower])}-${pick(['alpha', 'bravo', 'delta', 'echo', 'golf'])}`,
    active: random() < 0.5,
    score: Math.round(random() * 10000) / 100,
    tags: [pick(['red', 'green', 'blue']), pick(['new', 'old'])],
    createdAt: new Date(1.7e12 + int(3e10)).toISOString(),
  }))
  english.forEach((p, i) => add('english', `paragraph ${i + 1}`, p))
  add('english', 'all paragraphs', english.join('\n\n'))
  add('english', 'shuffled sentences, 85k chars', Array.from({ length: 40 }, () => shuffle(english.flatMap((p) => p.split('. '))).join('. ')).join('\n'))
  add('code', 'typescript', typescript)
  add('code', 'python', python)
  add('code', 'typescript, tabs', typescript.replace(/ {2}/g, '\t'))
  add('code', 'json, indented', JSON.stringify(records(40), null, 2))
  add('code', 'json, compact', JSON.stringify(records(40)))
  add('code', 'minified', typescript.replace(/\s+/g, ' ').replace(/ ?([{}()=,;:]) ?/g, '$1'))
  add('code', 'typescript x10', typescript.repeat(10))
  add('cjk', 'chinese', prose.chinese)
  add('cjk', 'japanese', prose.japanese)
  add('cjk', 'chinese + japanese x80', (prose.chinese + prose.japanese).repeat(80))
  add('korean', 'korean', prose.korean)
  add('korean', 'korean x150', prose.korean.repeat(150))
  add('cyrillic', 'russian', prose.russian)
  add('cyrillic', 'ukrainian', prose.ukrainian)
  add('cyrillic', 'russian x60', prose.russian.repeat(60))
  add('arabic', 'arabic', prose.arabic)
  add('arabic', 'arabic x80', prose.arabic.repeat(80))
  for (const k of ['french', 'german', 'spanish', 'polish', 'turkish', 'vietnamese'] as const) add('european', k, prose[k])
  add('european', 'french + german + spanish + polish x20', [prose.french, prose.german, prose.spanish, prose.polish].join('\n').repeat(20))
  for (const k of ['greek', 'hebrew', 'hindi', 'thai'] as const) add('other scripts', k, prose[k])
  add('emoji', 'run', Array.from({ length: 300 }, () => pick(emoji)).join(''))
  add('emoji', 'spaced', Array.from({ length: 300 }, () => pick(emoji)).join(' '))
  add('emoji', 'zwj sequences', Array.from({ length: 200 }, () => pick(zwj)).join(''))
  add('emoji', 'emoji, zwj and flags, 15k chars', Array.from({ length: 4000 }, () => pick([...emoji, ...zwj, ...flags]) + (random() < 0.2 ? ' ' : '')).join(''))
  add('emoji', 'flags', Array.from({ length: 300 }, () => pick(flags)).join(''))
  add('emoji', 'in prose', (english[1] as string).split(' ').map((w) => random() < 0.3 ? `${w} ${pick([...emoji, ...zwj, ...flags])}` : w).join(' '))
  add('base64', 'random bytes, 4k chars', randomBytes(3000).toString('base64'))
  add('base64', 'random bytes, 20k chars', randomBytes(15000).toString('base64'))
  add('base64', 'mime lines', randomBytes(6000).toString('base64').replace(/.{76}/g, '$&\n'))
  add('hex', 'random hex', randomBytes(4000).toString('hex'))
  add('hex', 'sha256 list', Array.from({ length: 100 }, () => randomBytes(32).toString('hex')).join('\n'))
  add('hex', 'uuids', Array.from({ length: 200 }, () => randomBytes(16).toString('hex').replace(/(.{8})(.{4})(.{4})(.{4})/, '$1-$2-$3-$4-')).join(', '))
  add('run', 'random lowercase 17k', chars(lower, 17000))
  add('run', 'random mixed case 12k', chars(lower + upper, 12000))
  add('run', 'random alphanumeric 20k', chars(lower + upper + digits, 20000))
  add('run', 'one letter x5k', 'a'.repeat(5000))
  add('digits', 'long number 10k', chars(digits, 10000))
  add('digits', 'spaced single digits', spaced(chars(digits, 5000)))
  add('digits', 'spaced single digits 40k', spaced(chars(digits, 20000)))
  add('digits', 'comma separated', Array.from({ length: 2000 }, () => String(int(100000))).join(','))
  add('digits', 'decimal table', Array.from({ length: 300 }, () => `${(random() * 1000).toFixed(3)}\t${(random() * 10).toFixed(2)}\t${int(99)}`).join('\n'))
  add('letters', 'spaced lowercase', spaced(chars(lower, 5000)))
  add('letters', 'spaced lowercase 40k', spaced(chars(lower, 20000)))
  add('letters', 'spaced mixed case', spaced(chars(lower + upper, 5000)))
  add('letters', 'newline separated', spaced(chars(lower + upper, 3000), '\n'))
  add('punctuation', 'random', chars(punct, 5000))
  add('punctuation', 'random 17k', chars(punct, 17000))
  add('punctuation', 'spaced', spaced(chars(punct, 3000)))
  add('punctuation', 'repeated', '!?'.repeat(2000) + '-'.repeat(3000) + '=*'.repeat(1000))
  add('whitespace', 'random', chars(' \t\n\r', 5000))
  add('whitespace', 'random 17k', chars(' \t\n\r', 17000))
  add('whitespace', 'spaces', ' '.repeat(5000))
  add('whitespace', 'newlines', '\n'.repeat(5000))
  add('whitespace', 'indented blank lines', '\n    \n\t\t\n'.repeat(500))
  add('control', 'C0', codePoints(0, 31, 3000))
  add('control', 'C0 20k', codePoints(0, 31, 20000))
  add('control', 'C0 + DEL between letters', Array.from({ length: 1500 }, () => pick([...lower]) + String.fromCharCode(pick([0, 1, 2, 7, 8, 11, 12, 27, 127]))).join(''))
  add('control', 'C1', codePoints(0x80, 0x9f, 2000))
  add('control', 'zero-width and bidi', Array.from({ length: 1000 }, () => pick(['\u200b', '\u200c', '\u200d', '\u200e', '\u202e', '\u2066', '\ufeff', '\u00ad']) + pick([...lower])).join(''))
  add('special', 'special tokens', Array.from({ length: 300 }, () => pick(specials)).join(''))
  add('special', 'special tokens 20k', Array.from({ length: 1600 }, () => pick(specials)).join(''))
  add('special', 'special tokens in prose', (english[0] as string).replace(/\. /g, '. <|endoftext|> '))
  const pieces = () => [pick(english), typescript.slice(int(1500), 1500 + int(400)), prose.chinese, prose.korean, prose.russian, prose.arabic,
    pick(emoji) + pick(zwj) + pick(flags), randomBytes(200).toString('base64'), randomBytes(100).toString('hex'), chars(lower, 300),
    spaced(chars(digits, 200)), chars(punct, 100), codePoints(0, 31, 50)]
  add('mixed', 'shuffled pieces', shuffle(pieces()).join(' '))
  add('mixed', 'shuffled pieces x30', Array.from({ length: 30 }, () => shuffle(pieces()).join('\n')).join('\n'))
  add('mixed', 'english with a block of spaced digits', english.join(' ').repeat(20) + spaced(chars(digits, 8000)) + english.join(' ').repeat(10))
  add('mixed', 'records with base64 fields', JSON.stringify(Array.from({ length: 60 }, (_, id) => ({ id, note: pick(english), blob: randomBytes(300).toString('base64') }))))
  add('mixed', 'code with unicode strings', typescript.replace(/'[^']*'/g, () => `'${pick([prose.chinese.slice(0, 20), prose.russian.slice(0, 30), pick(emoji) + pick(zwj)])}'`))
  return out
}

/** Text only the worst-case bound covers: code points no language strings together, nonsense words. */
function adversarial (): Sample[] {
  state = 0x9e3779b9
  return [
    ['random CJK ideographs', codePoints(0x4e00, 0x9fff, 3000)],
    ['random Hangul syllables', codePoints(0xac00, 0xd7a3, 3000)],
    ['random 2-byte code points', codePoints(0x80, 0x7ff, 3000)],
    ['random 3-byte code points', codePoints(0x800, 0xd7ff, 3000)],
    ['random astral code points', codePoints(0x10000, 0x10ffff, 2000)],
    ['pronounceable nonsense words', Array.from({ length: 2000 }, () => Array.from({ length: 1 + int(3) }, () => pick([...'bcdfghjklmnprstvwz']) + pick([...'aeiou'])).join('')).join(' ')],
    ['random short lowercase words', Array.from({ length: 3000 }, () => chars(lower, 1 + int(6))).join(' ')],
  ].map(([name, text]) => ({ category: 'adversarial', name: name as string, text: text as string }))
}

/**
 * Measured per category, both encodings (see the printed table), with ~5% headroom: [largest ratio,
 * largest median ratio]. An estimate that grows past these is a regression even though it is still safe.
 */
const CEILING: Record<string, readonly [max: number, median: number]> = {
  english: [1.63, 1.26],
  code: [1.42, 1.37],
  cjk: [2.46, 2.17],
  korean: [1.94, 1.94],
  cyrillic: [2.8, 2.77],
  arabic: [3.12, 3.12],
  european: [3.43, 1.57],
  'other scripts': [4.03, 3.26],
  emoji: [1.98, 1.79],
  base64: [1.37, 1.37],
  hex: [1.4, 1.39],
  run: [4.41, 1.36],
  digits: [1.1, 1.1],
  letters: [1.1, 1.1],
  punctuation: [2.67, 1.17],
  whitespace: [32.9, 1.61],
  control: [1.49, 1.07],
  special: [1.57, 1.57],
  mixed: [1.59, 1.49],
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1] ?? 0
const range = (xs: number[]) => `${Math.min(...xs).toFixed(2)} / ${median(xs).toFixed(2)} / ${Math.max(...xs).toFixed(2)}`

t.test('the corpus: never under either exact count, never over the UTF-8 length, and no looser than measured', async (t) => {
  const ratios = new Map<string, { o200k: number[], cl100k: number[] }>()
  for (const { category, name, text } of corpus()) {
    const estimate = estimateTextTokens(text)
    const exact = { o200k: o200k(text, asText), cl100k: cl100k(text, asText) }
    t.ok(estimate >= exact.o200k && estimate >= exact.cl100k, `${category} / ${name}: ${estimate} >= ${exact.o200k} (o200k), ${exact.cl100k} (cl100k)`)
    t.ok(estimate <= bytes(text), `${category} / ${name}: ${estimate} <= ${bytes(text)} bytes`)
    const r = ratios.get(category) ?? { o200k: [], cl100k: [] }
    r.o200k.push(estimate / exact.o200k)
    r.cl100k.push(estimate / exact.cl100k)
    ratios.set(category, r)
  }
  t.comment('| category | samples | o200k min / median / max | cl100k min / median / max |')
  t.comment('| --- | --- | --- | --- |')
  for (const [category, r] of ratios) {
    t.comment(`| ${category} | ${r.o200k.length} | ${range(r.o200k)} | ${range(r.cl100k)} |`)
    const [max, med] = CEILING[category] ?? [0, 0]
    const both = [...r.o200k, ...r.cl100k]
    t.ok(Math.max(...both) <= max, `${category}: largest ratio ${Math.max(...both).toFixed(2)} <= ${max}`)
    t.ok(Math.max(median(r.o200k), median(r.cl100k)) <= med, `${category}: median ratio <= ${med}`)
  }
  t.strictSame([...ratios.keys()].sort(), Object.keys(CEILING).sort(), 'every category has a ceiling')
})

t.test(`adversarial text stays within the worst case (${WORST_CASE_FACTOR}x under)`, async (t) => {
  for (const { name, text } of adversarial()) {
    const estimate = estimateTextTokens(text)
    const exact = Math.max(o200k(text, asText), cl100k(text, asText))
    t.ok(estimate >= Math.ceil(bytes(text) / WORST_CASE_FACTOR) && estimate <= bytes(text), `${name}: bytes / ${WORST_CASE_FACTOR} <= ${estimate} <= bytes`)
    t.ok(exact <= estimate * WORST_CASE_FACTOR, `${name}: exact ${exact} is ${(exact / estimate).toFixed(2)}x the estimate`)
  }
})

t.test('any string: between bytes / 4 and bytes, and no exact count above 4x the estimate', async (t) => {
  const seed = Number(process.env.FUZZ_SEED ?? Date.now() % 2 ** 31)
  t.comment(`fast-check seed ${seed} (replay with FUZZ_SEED=${seed})`)
  fc.assert(fc.property(fc.oneof(fc.string({ unit: 'binary', maxLength: 300 }), fc.string({ unit: 'grapheme', maxLength: 300 }), fc.string({ maxLength: 300 })), (s) => {
    const estimate = estimateTextTokens(s)
    return estimate >= bytes(s) / WORST_CASE_FACTOR && estimate <= bytes(s) &&
      Math.max(o200k(s, asText), cl100k(s, asText)) <= estimate * WORST_CASE_FACTOR
  }), { seed, numRuns: 300 })
  t.pass('property held')
})

t.test('short strings and edges', async (t) => {
  t.strictSame(estimateTextTokens(''), 0)
  for (const s of ['a', 'Hi!', 'ok ', 'hello world', ' 1 2 3 ', 'x\ty\n', 'é', 'naïve café', '😀', '🇫🇷', '<|endoftext|>', '1a2b3c', 'aB', 'HTTPServer', '\x00', 'a\u0300', '\ud800', 'a\udc00b']) {
    const estimate = estimateTextTokens(s)
    t.ok(estimate >= o200k(s, asText) && estimate >= cl100k(s, asText) && estimate <= bytes(s), `${JSON.stringify(s)}: ${estimate}`)
  }
})

t.test('long text is sampled, and the sample scales with the length', async (t) => {
  const block = english.join(' ').repeat(8).slice(0, 16_384)
  const one = estimateTextTokens(block)
  const sixtyFour = estimateTextTokens(block.repeat(64))
  t.ok(Math.abs(sixtyFour / (64 * one) - 1) < 0.05, `64 blocks: ${sixtyFour}, one block: ${one}`)
})

t.test('ASCII text: its length stands in for the UTF-8 length, with the same estimate', async (t) => {
  for (const s of [...english, 'lorem ipsum '.repeat(3000), chars(lower + digits + punct, 40_000)]) {
    t.strictSame(estimateTextTokens(s, true), estimateTextTokens(s), `${s.length} units`)
  }
  const row = endpoints.find((e) => e.id === 'chat.completions') as (typeof endpoints)[number]
  const analysis = analyse(row, { messages: [{ role: 'user', content: 'é'.repeat(20_000) }, { role: 'user', content: 'naïve' }] })
  t.equal(analysis.asciiText, false, 'analyse() alone never claims ASCII: only the raw bytes tell (analysisOf)')
  t.strictSame(estimatePrompt(analysis), 2 * PER_MESSAGE + estimateTextTokens('é'.repeat(20_000)) + estimateTextTokens('user\nuser\nnaïve'))
})

t.test('estimatePrompt: message framing, binary payloads at a flat cost, token ids one each', async (t) => {
  const row = (id: string) => endpoints.find((e) => e.id === id) as (typeof endpoints)[number]
  const estimate = (id: string, body: unknown) => estimatePrompt(analyse(row(id), body))
  const blob = 'data:image/png;base64,' + 'A'.repeat(BINARY_MIN_LENGTH + 1)
  const image = { role: 'user', content: [{ type: 'image_url', image_url: { url: blob } }] }
  t.strictSame(estimate('chat.completions', { messages: [image] }), PER_MESSAGE + BINARY_TOKENS + estimateTextTokens('user\nimage_url'))
  t.strictSame(estimate('responses', { input: [{ type: 'input_audio', data: 'short' }] }), estimateTextTokens('input_audio\nshort'), 'a short value under a binary key is text')
  t.strictSame(estimate('completions', { prompt: [1, 2, 3, 2.5, true, null] }), 3)
  t.strictSame(estimate('completions', { prompt: 'hello there' }), estimateTextTokens('hello there'), 'one string is estimated as it is')
  t.strictSame(estimate('chat.completions', { messages: [] }), 0)
  const long = 'lorem ipsum dolor sit amet '.repeat(1000)
  t.strictSame(estimate('chat.completions', { messages: [{ role: 'user', content: long }, { role: 'assistant', content: 'ok' }] }),
    2 * PER_MESSAGE + estimateTextTokens(long) + estimateTextTokens('user\nassistant\nok'), 'a long string is estimated on its own, short ones together')
  t.strictSame(estimate('chat.completions', { model: 'not a prompt field', metadata: { note: 'nor this' } }), 0, 'only prompt fields count')
})

t.test('outputCap: the smallest positive cap, else the fallback, times n', async (t) => {
  const fields = ['max_tokens', 'max_completion_tokens']
  t.strictSame(outputCap({ max_tokens: 100, max_completion_tokens: 50 }, fields, 4096), 50)
  t.strictSame(outputCap({ max_tokens: 0, max_completion_tokens: '9' }, fields, 4096), 4096)
  t.strictSame(outputCap({ max_tokens: 100, n: 3 }, fields, 4096), 300)
  t.strictSame(outputCap({ n: 2.7 }, fields, 10), 20)
  t.strictSame(outputCap({ n: 1 }, fields, 10), 10)
  t.strictSame(outputCap({ n: '3' }, fields, 10), 10)
})
