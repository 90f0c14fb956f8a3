//! Unit tests are plain executables: Node provides the napi symbols only when the addon is loaded. A few are
//! still referenced (through napi's Error/ThreadsafeFunction drop glue), so the test build defines them; they
//! are never reached because the tests create no napi values.

macro_rules! stub {
  ($($name:ident),*) => {$(
    #[no_mangle]
    extern "C" fn $name() -> i32 {
      // Reaching this means a unit test touched a JS value, which it must not.
      std::process::abort()
    }
  )*};
}

stub!(napi_reference_unref, napi_delete_reference, napi_call_threadsafe_function);
