// The source that carries test_prelude.h's precompiled header (target
// backflow_test_pch); it defines nothing.
