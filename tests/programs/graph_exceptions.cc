// graph_exceptions: C++ exceptions thrown through traced frames, and caught.
//
//   main ─► catcher ─► thrower ─► thrower ─► thrower  throw ⇒ caught in catcher ─► handled
//             (each thrower frame holds a Guard whose destructor calls cleanup while unwinding)
//   main ─► outer_catch ─► middle ─► thrower  throw ⇒ middle catches, calls cleanup and
//             rethrows ⇒ caught in outer_catch ─► handled
//   main ─► nested ─► thrower throw ⇒ a Guard's destructor, while unwinding, calls
//             inner_catch, which throws and catches an exception of its own
//
// The unwinder must never meet a hooked return address (it would call std::terminate),
// and the frames it unwinds must be closed in the trace.
//
// Usage: graph_exceptions [ROUNDS]   (default 1)
// stdout: "count NAME N" per function, then "result R"; exit status 0.
#include <cstdio>
#include <cstdlib>
#include <stdexcept>

#define TRACED __attribute__((noipa))
#define BARRIER() __asm__ volatile("" ::: "memory")

extern "C" {
long count_catcher, count_thrower, count_cleanup, count_handled, count_outer_catch, count_middle,
    count_nested, count_inner_catch;

TRACED void cleanup(void)
{
    count_cleanup++;
}

TRACED long handled(long x)
{
    count_handled++;
    return x + 1;
}

TRACED long inner_catch(long x)
{
    count_inner_catch++;
    try {
        throw std::runtime_error("inner");
    } catch (const std::exception &) {
        return x;
    }
}
}

struct Guard {
    bool nested;
    ~Guard()
    {
        if (nested)
            inner_catch(1);
        else
            cleanup();
    }
};

extern "C" {
TRACED void thrower(long n, bool nested)
{
    count_thrower++;
    Guard guard{nested};
    if (n == 0)
        throw std::runtime_error("thrown");
    thrower(n - 1, false);
    BARRIER();
}

TRACED long catcher(long n)
{
    count_catcher++;
    try {
        thrower(n, false);
    } catch (const std::exception &) {
        return handled(n);
    }
    return 0;
}

TRACED void middle(void)
{
    count_middle++;
    try {
        thrower(0, false);
    } catch (...) {
        cleanup();
        throw;
    }
}

TRACED long outer_catch(void)
{
    count_outer_catch++;
    try {
        middle();
    } catch (const std::exception &) {
        return handled(10);
    }
    return 0;
}

TRACED long nested(void)
{
    count_nested++;
    try {
        thrower(0, true);
    } catch (const std::exception &) {
        return handled(20);
    }
    return 0;
}
}

int main(int argc, char **argv)
{
    long rounds = argc > 1 ? atol(argv[1]) : 1;
    long result = 0;
    for (long i = 0; i < rounds; i++) {
        result += catcher(2);
        BARRIER();
        result += outer_catch();
        BARRIER();
        result += nested();
        BARRIER();
    }
    std::printf("count catcher %ld\ncount thrower %ld\ncount cleanup %ld\ncount handled %ld\n"
                "count outer_catch %ld\ncount middle %ld\ncount nested %ld\ncount inner_catch %ld\n",
                count_catcher, count_thrower, count_cleanup, count_handled, count_outer_catch,
                count_middle, count_nested, count_inner_catch);
    std::printf("result %ld\n", result);
    return 0;
}
