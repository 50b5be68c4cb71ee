import neostandard from 'neostandard'

// Threat A03: secrets are compared as digests in constant time (plugins/auth/index.ts), never with == or ===.
// Any equality between something named like a key, secret or token and anything but a literal, undefined
// or a typeof is refused in the shipped code (tests and the bench compare fake keys on purpose).
const SECRETISH = '/^(?:.*[kK]ey|.*[sS]ecret|.*[tT]oken|candidate|presented|authorization)$/'
export default [
  ...neostandard({ ts: true, ignores: ['dist/**', 'node_modules/**', 'coverage/**', '.tap/**'] }),
  {
    files: ['**/*.ts'],
    ignores: ['test/**', 'bench/**'],
    rules: {
      'no-restricted-syntax': ['error', {
        selector: `BinaryExpression[operator=/^[!=]==?$/]:matches([left.type='Identifier'][left.name=${SECRETISH}], [right.type='Identifier'][right.name=${SECRETISH}], [left.type='MemberExpression'][left.property.name=${SECRETISH}], [right.type='MemberExpression'][right.property.name=${SECRETISH}]):not([left.type='Literal']):not([right.type='Literal']):not([right.name='undefined']):not([left.type='UnaryExpression']):not([right.type='UnaryExpression'])`,
        message: 'Compare secrets as digests with timingSafeEqual (plugins/auth/index.ts), never with == or ==='
      }]
    }
  }
]
