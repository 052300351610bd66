//! Typed views of the few messages pgtenant looks inside.
