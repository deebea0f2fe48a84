/**
 * Building blocks of the config schema (src/config/sections/*.ts): TypeBox types that
 * produce exactly the JSON schema ajv validates in load.ts, and whose `Static<>` is the
 * config AFTER validation, i.e. with every default filled in.
 *
 * The rule that makes `Static<>` the filled-in type: a key whose schema has a `default`
 * may be left out of the YAML (ajv's `useDefaults` fills it, load.ts), so {@link Section}
 * leaves it out of the JSON schema's `required` list, but keeps it a required key of the
 * TypeScript type. A key without a default is required in both.
 *
 * Write every key with a `description`: it is the comment in config.sample.yaml (sample.ts).
 */
import { Type, type SchemaOptions, type Static, type TObject, type TProperties, type TSchema, type TUnsafe } from "@sinclair/typebox";

/** Pattern of a DNS host name or domain (letters, digits, dots, hyphens). */
export const HOST_PATTERN = "^[A-Za-z0-9.-]+$";

/** Options every section and subsection takes: its description (the sample-config comment) and default. */
export interface SectionOptions extends SchemaOptions {
  /** What the section is for; the comment above it in config.sample.yaml. */
  description: string;
}

/**
 * A config section (or subsection): an object with exactly these keys
 * (`additionalProperties: false`, so a misspelt key is an error naming it).
 * @param properties the keys, in the order config.sample.yaml lists them
 * @param options description, and `default: {}` when the whole section may be left out
 * @returns the object schema; `required` lists only the keys that have no `default`
 */
export function Section<P extends TProperties>(properties: P, options: SectionOptions): TObject<P> {
  const schema = Type.Object(properties, { ...options, additionalProperties: false });
  const required = Object.keys(properties).filter((key) => !("default" in properties[key]!));
  return { ...schema, required };
}

/**
 * `schema` or null (ajv's `nullable: true`, which keeps the error messages of `schema`
 * instead of an anyOf's).
 * @param schema the non-null type, with its `description` and usually `default: null`
 * @param options more options (e.g. `default: null` when `schema` is shared)
 */
export function Nullable<T extends TSchema>(schema: T, options: SchemaOptions = {}): TUnsafe<Static<T> | null> {
  return Type.Unsafe<Static<T> | null>({ ...schema, ...options, nullable: true });
}

/**
 * One of a fixed list of strings (a JSON schema `enum`; errors list the allowed values).
 * @param values the allowed strings
 * @param options description and default
 */
export function StringEnum<const V extends readonly string[]>(values: V, options: SchemaOptions & { description: string }): TUnsafe<V[number]> {
  return Type.Unsafe<V[number]>({ ...options, type: "string", enum: [...values] });
}

/**
 * A mapping with keys of the operator's choice and values of one type (e.g. domain → `host:port`).
 * @param values the schema of every value
 * @param options description, default, and `propertyNames: { pattern }` to restrict the keys
 */
export function StringMap<V extends TSchema>(
  values: V,
  options: SchemaOptions & { description: string; propertyNames?: { pattern: string } },
): TUnsafe<Record<string, Static<V>>> {
  return Type.Unsafe<Record<string, Static<V>>>({ ...options, type: "object", required: [], additionalProperties: values });
}
