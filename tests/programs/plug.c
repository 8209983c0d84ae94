/* plug: a shared library for dlopener.c, loaded with dlopen.
 *
 * plug_work() is the function the tests trace through "plug_work:mod:libplug.so";
 * the library counts its own calls (plug_calls), which survive neither dlclose nor exit,
 * so dlopener.c counts them too.
 */
__attribute__((noipa)) long plug_work(long x)
{
    static volatile long seen;
    seen += x;
    return x * 2 + 1;
}
