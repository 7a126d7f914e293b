mod connect;
mod maps;
mod scope;
mod sock_create;
mod sock_ops;
mod udp;

/// Return values of the cgroup sock and sock_addr programs: 0 makes the
/// system call fail with `EPERM`.
const ALLOW: i32 = 1;
const REFUSE: i32 = 0;

/// Reads an IPv6 address field of a program context word by word: the
/// verifier accepts only 4-byte accesses there, and a plain copy may be
/// merged into 8-byte loads by LLVM.
///
/// # Safety
/// `field` must point into the program's context.
#[inline(always)]
unsafe fn read_words(field: *const [u32; 4]) -> [u32; 4] {
    let p = field.cast::<u32>();
    // SAFETY: the caller guarantees four readable words.
    unsafe {
        [
            p.read_volatile(),
            p.add(1).read_volatile(),
            p.add(2).read_volatile(),
            p.add(3).read_volatile(),
        ]
    }
}

/// Writes an IPv6 address field of a program context word by word; see
/// [`read_words`].
///
/// # Safety
/// `field` must point into the program's context, at a writable field.
#[inline(always)]
unsafe fn write_words(field: *mut [u32; 4], words: [u32; 4]) {
    let p = field.cast::<u32>();
    // SAFETY: the caller guarantees four writable words.
    unsafe {
        p.write_volatile(words[0]);
        p.add(1).write_volatile(words[1]);
        p.add(2).write_volatile(words[2]);
        p.add(3).write_volatile(words[3]);
    }
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never called.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
